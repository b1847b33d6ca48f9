"""Videos of an agent: an MP4 file and an animated GIF for TensorBoard's Images tab.

The MP4 is encoded with PyAV, whose wheels bundle FFmpeg's libraries, so no system
ffmpeg is needed. TensorBoard has no video player: ``SummaryWriter.add_video`` writes an
animated GIF as an image summary and needs moviepy to encode it. We write the same kind
of summary with Pillow's GIF encoder instead, which matplotlib already brings along.
"""

from __future__ import annotations

import os
from fractions import Fraction
from io import BytesIO
from pathlib import Path

import numpy as np

# TensorBoard keeps the whole GIF in memory and in the events file: film a thumbnail of
# the start only; the MP4 holds every frame at full size.
GIF_MAX_SIDE = 160
GIF_MAX_FRAMES = 1000


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even sides: repeat the last row/column where one is odd."""
    height, width = frame.shape[:2]
    if height % 2 or width % 2:
        frame = np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    return frame


def _codec() -> str:
    import av

    # libx264 plays everywhere (browsers included); FFmpeg's own mpeg4 encoder is the
    # fallback for a PyAV build without it
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


class VideoRecorder:
    """Streams RGB frames [H, W, 3] uint8 into an MP4 and keeps a small GIF copy.

    The frames go to a hidden partial file beside ``path``, which takes its name only once
    the video is whole (``close``): an evaluation that fails or is interrupted leaves no
    truncated MP4, and a video already at ``path`` stays until a new one replaces it."""

    def __init__(self, path: Path, fps: float):
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial_path = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.fps = fps
        self.frames = 0
        self._container = av.open(str(self.partial_path), mode="w")
        self._stream = None
        self._gif: list = []

    def add(self, frame: np.ndarray) -> None:
        import av

        frame = _even(np.ascontiguousarray(frame, dtype=np.uint8))
        if self._stream is None:
            self._stream = self._container.add_stream(_codec(), rate=Fraction(self.fps).limit_denominator(1000))
            self._stream.height, self._stream.width = frame.shape[:2]
            self._stream.pix_fmt = "yuv420p"
        self._mux(self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        self.frames += 1
        if len(self._gif) < GIF_MAX_FRAMES:
            self._gif.append(_thumbnail(frame))

    def _mux(self, packets) -> None:
        for packet in packets:
            self._container.mux(packet)

    def close(self, keep: bool = True) -> None:
        """Ends the file: at ``path`` where ``keep`` (the video is whole), else removed."""
        try:
            if keep and self._stream is not None:
                self._mux(self._stream.encode())  # flush the frames the encoder still holds
            self._container.close()
            if keep:
                os.replace(self.partial_path, self.path)
        finally:
            self.partial_path.unlink(missing_ok=True)

    def gif_summary(self, tag: str):
        """The GIF as a TensorBoard image summary (what ``add_video`` writes), or None."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        if not self._gif:
            return None
        buffer = BytesIO()
        first, *rest = self._gif
        centiseconds = max(1, round(100 / self.fps))  # GIF counts time in hundredths of a second
        first.save(buffer, format="GIF", save_all=True, append_images=rest, duration=10 * centiseconds, loop=0)
        image = Summary.Image(height=first.height, width=first.width, colorspace=3, encoded_image_string=buffer.getvalue())
        return Summary(value=[Summary.Value(tag=tag, image=image)])


def _thumbnail(frame: np.ndarray):
    from PIL import Image

    image = Image.fromarray(frame)
    scale = GIF_MAX_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(2, round(image.width * scale)), max(2, round(image.height * scale))), Image.Resampling.BILINEAR)
    return image.quantize(colors=256)  # palette images take a third of the memory
