"""`parallel-rl eval --video`: an MP4 with one frame per step plus each episode's first
observation, and the same film as a GIF in the run's TensorBoard."""

import importlib.util
import re
from io import BytesIO
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from parallel_rl import checkpoint as ckpt
from parallel_rl.algos import make_algorithm
from parallel_rl.cli import main
from parallel_rl.config import ConfigError, EnvConfig, build_config
from parallel_rl.envs import env_spec, make_env
from parallel_rl.evaluate import Camera, check_renders, evaluate


def decoded_frames(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def video_line(stdout):
    """(lengths, returns, frames, source) from eval's `video:` line."""
    match = re.search(r"episode\(s\) of ([\d + ]+) steps, returns ([-\d., ]+); (\d+) frames \((\w+)", stdout)
    assert match, stdout
    lengths = [int(n) for n in match[1].split(" + ")]
    returns = [float(r) for r in match[2].split(", ")]
    return lengths, returns, int(match[3]), match[4]


def test_cartpole_video_has_one_frame_per_step_plus_first_observation(filmed_cartpole):
    run, video, stdout = filmed_cartpole
    lengths, returns, frames, source = video_line(stdout)
    assert len(lengths) == 2 and source == "rendered"
    # CartPole pays 1 per step: the returns vouch for the lengths independently
    assert returns == [float(n) for n in lengths]
    decoded = decoded_frames(video)
    assert len(decoded) == frames == sum(lengths) + 2
    height, width, channels = decoded[0].shape
    assert channels == 3 and height >= 100 and width >= 100
    assert len({frame.tobytes() for frame in decoded[:5]}) > 1  # the pole moves: not one frame repeated
    step = ckpt.load(ckpt.find(run))["step"]
    assert f"logged to {run / 'tb'} as eval/video at step {step}" in stdout


def test_video_is_logged_to_the_runs_tensorboard_as_a_gif(filmed_cartpole):
    run, _, stdout = filmed_cartpole
    _, _, frames, _ = video_line(stdout)
    accumulator = EventAccumulator(str(run / "tb"), size_guidance={IMAGES: 0})
    accumulator.Reload()
    assert "eval/video" in accumulator.Tags()["images"]
    (event,) = accumulator.Images("eval/video")
    assert event.step == ckpt.load(ckpt.find(run))["step"]
    gif = Image.open(BytesIO(event.encoded_image_string))
    assert gif.format == "GIF" and max(gif.size) <= 160
    # Pillow merges repeated frames into one longer one: the total duration counts them all
    durations = []
    for index in range(gif.n_frames):
        gif.seek(index)
        durations.append(gif.info["duration"])
    assert sum(durations) == frames * 30  # 30 fps in whole hundredths of a second


def test_default_video_path_is_in_the_run_directory(cartpole_runs):
    run, _ = cartpole_runs["paac_s2"]
    checkpoint = ckpt.find(run)
    video = evaluate(checkpoint, 1, video=True).video
    assert video.path == run / "videos" / f"eval_step_{ckpt.load(checkpoint)['step']}.mp4"
    assert len(decoded_frames(video.path)) == video.frames == video.lengths[0] + 1


def test_an_interrupted_evaluation_keeps_the_earlier_video_and_leaves_no_partial_file(cartpole_runs, monkeypatch):
    """The MP4 was opened at its final name before the first frame: an evaluation stopped
    part way left a truncated file there, in place of the video an earlier one had made."""
    from parallel_rl.video import VideoRecorder

    run, _ = cartpole_runs["paac_s2"]
    checkpoint = ckpt.find(run)
    earlier = evaluate(checkpoint, 1, video=True).video.path
    whole = earlier.read_bytes()
    add = VideoRecorder.add

    def stopped_at_frame_10(recorder, frame):
        if recorder.frames == 10:
            raise KeyboardInterrupt
        add(recorder, frame)

    monkeypatch.setattr(VideoRecorder, "add", stopped_at_frame_10)
    with pytest.raises(KeyboardInterrupt):
        evaluate(checkpoint, 1, video=True)
    assert earlier.read_bytes() == whole
    assert [p.name for p in earlier.parent.iterdir()] == [earlier.name]


def test_pong_video_from_a_fresh_checkpoint(tmp_path):
    """Pong's own colour screen, from an untrained policy: a checkpoint needs no training."""
    cfg = build_config("paac_atari", overrides=["actors.num_envs=2", "env.max_episode_steps=40"])
    algo = make_algorithm(env_spec(cfg.env), cfg, torch.device("cpu"))
    checkpoint = tmp_path / "step_0.pt"
    ckpt.save_atomic({"algo": algo.state_dict(), "step": 0, "updates": 0, "config": cfg.to_dict()}, checkpoint)
    video = evaluate(checkpoint, 1, video=True).video
    assert video.path == tmp_path / "step_0.mp4" and video.tensorboard is None  # not inside a run directory
    assert video.lengths == [40]  # truncated by env.max_episode_steps: no Pong game ends sooner
    decoded = decoded_frames(video.path)
    assert len(decoded) == video.frames == 41
    assert video.source == "rendered" and decoded[0].shape == (210, 160, 3)
    assert video.fps == 15  # 60 Hz / frame_skip 4: real time


@pytest.mark.parametrize(("args", "needle"), [
    (["--video", "clip.avi"], "ending in .mp4"),
    (["--video-episodes", "0"], "--video-episodes 0"),
])
def test_bad_video_arguments_exit_2(cartpole_runs, capsys, args, needle):
    run, _ = cartpole_runs["paac_s1"]
    assert main(["eval", str(run), *args]) == 2
    assert needle in capsys.readouterr().err


def test_a_video_path_that_is_a_directory_exits_2_before_any_episode(cartpole_runs, capsys, tmp_path):
    run, _ = cartpole_runs["paac_s1"]
    folder = tmp_path / "clip.mp4"
    folder.mkdir()
    assert main(["eval", str(run), "--video", str(folder)]) == 2
    assert "is a directory" in capsys.readouterr().err and not any(folder.iterdir())


def test_gymnasium_cartpole_films_with_pygame_or_says_how(tmp_path):
    cfg = build_config("paac_classic", overrides=["env.backend=gymnasium", "env.max_episode_steps=12"])
    algo = make_algorithm(env_spec(cfg.env), cfg, torch.device("cpu"))
    checkpoint = tmp_path / "step_0.pt"
    ckpt.save_atomic({"algo": algo.state_dict(), "step": 0, "updates": 0, "config": cfg.to_dict()}, checkpoint)
    if importlib.util.find_spec("pygame") is None:
        with pytest.raises(ConfigError, match="pip install pygame"):
            evaluate(checkpoint, 1, video=True)
        assert not (tmp_path / "step_0.mp4").exists()
    else:
        video = evaluate(checkpoint, 1, video=True).video
        assert len(decoded_frames(video.path)) == video.frames == video.lengths[0] + 1


class UnrenderableEnv:
    """Image observations, no renderer: the camera falls back to what the agent sees."""

    spec = SimpleNamespace(id="Fake-v0", backend="envpool", obs_shape=(4, 6, 8), is_image=True, is_atari=True)

    def render(self, index):
        raise RuntimeError("no renderer")


def test_camera_falls_back_to_the_newest_stacked_frame():
    camera = Camera(UnrenderableEnv())
    assert camera.source == "observations"
    obs = np.arange(2 * 4 * 6 * 8, dtype=np.uint8).reshape(2, 4, 6, 8)
    frame = camera.frame(obs)
    assert frame.shape == (6, 8, 3) and frame.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(frame[..., channel], obs[0, -1])  # env 0, newest frame, gray


def test_mujoco_rendering_is_probed_before_it_can_abort_the_process():
    """Without an OpenGL context MuJoCo aborts the process: the probe must say so first."""
    cfg = EnvConfig(id="HalfCheetah-v5")
    try:
        check_renders(cfg)
    except ConfigError as exc:
        assert "cannot render HalfCheetah-v5" in str(exc)
        return
    env = make_env(cfg, 1, 0, num_threads=1, render=True)  # the probe said it works: so it must, here
    try:
        frame = env.render(0)
    finally:
        env.close()
    assert frame.ndim == 3 and frame.shape[-1] == 3


def _read_only(monkeypatch, folder):
    """``folder`` and everything under it refuse new files, as on a read-only mount (root
    writes through permission bits, so the refusal is made where a new file is tried)."""
    import errno
    import tempfile

    make = tempfile.TemporaryFile

    def refusing(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(folder)):
            raise OSError(errno.EROFS, "Read-only file system")
        return make(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refusing)


def test_a_run_that_cannot_be_written_films_elsewhere_or_is_refused_before_any_episode(cartpole_runs, capsys, monkeypatch,
                                                                                        tmp_path):
    """A run directory read-only to this user (a colleague's, a mounted archive): filming into
    it is refused before the episodes are played; filmed elsewhere, the score and the MP4
    come out and the GIF is not logged, for a reason the user is told."""
    run, _ = cartpole_runs["paac_s1"]
    _read_only(monkeypatch, run)
    assert main(["eval", str(run), "--episodes", "1", "--video"]) == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and "--video PATH" in err and not (run / "videos").exists(), err
    clip = tmp_path / "clip.mp4"
    assert main(["eval", str(run), "--episodes", "1", "--video", str(clip)]) == 0
    out = capsys.readouterr().out
    assert "mean return" in out and clip.is_file(), out
    assert f"not logged to TensorBoard: {run / 'tb'} cannot be written" in out, out
