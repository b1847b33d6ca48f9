"""Play episodes with a trained policy from a checkpoint, optionally filming them."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .algos import inductor_builds_code, make_policy
from .config import ConfigError, check_writable_folder, from_saved
from .envs import EnvSpec, VecEnv, choose_backend, make_env
from .runtime import supervision
from .runtime.runner import resolve_device

MAX_EVAL_ENVS = 32
VIDEO_TAG = "eval/video"
ATARI_HZ = 60  # the emulator's frame rate: an agent step lasts frame_skip of its frames
DEFAULT_FPS = 30


@dataclass
class Video:
    """What was filmed: env 0's first episodes, each from its first observation to its last."""

    path: Path
    fps: float
    source: str  # "rendered" (the environment's RGB frames) or "observations" (what the agent sees)
    # every step's result plus each episode's first observation: sum(lengths) + len(lengths), and one
    # more per life lost before the last under EnvPool's episodic life (its reset step, in no length, plays on)
    frames: int = 0
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    tensorboard: Path | None = None  # the tb/ folder the GIF was logged to
    not_logged: str = "the checkpoint is not inside a run directory"  # why not, where tensorboard is None
    step: int = 0  # the checkpoint's step, the GIF's global step


@dataclass
class Evaluation:
    checkpoint: Path
    returns: list[float]
    video: Video | None = None


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory holding ``checkpoint`` (in its checkpoints/ folder), if any."""
    run = checkpoint.resolve().parent.parent
    return run if checkpoint.resolve().parent.name == "checkpoints" and (run / "config.yaml").is_file() else None


def default_video_path(checkpoint: Path, step: int) -> Path:
    run = run_dir_of(checkpoint)
    return run / "videos" / f"eval_step_{step}.mp4" if run else checkpoint.with_suffix(".mp4")


def _observation_frame(spec: EnvSpec, obs: np.ndarray) -> np.ndarray:
    """An RGB picture of an image observation [C, H, W]: its newest stacked frame in gray,
    or the image itself when it has exactly three channels."""
    if obs.shape[0] == 3 and not spec.is_atari:
        return np.moveaxis(obs, 0, -1)
    return np.repeat(obs[-1][..., None], 3, axis=-1)


def _needs_opengl(env_id: str) -> bool:
    """EnvPool's MuJoCo tasks render through OpenGL, and where no OpenGL context can be made
    MuJoCo aborts the whole process instead of raising."""
    from envpool.registration import registry

    entry = registry.specs.get(env_id)
    return entry is not None and entry[0].startswith("envpool.mujoco")


def _render_once(env_cfg) -> None:
    os.chdir(tempfile.gettempdir())  # where MuJoCo writes MUJOCO_LOG.TXT when it aborts
    env = make_env(env_cfg, 1, 0, num_threads=1, render=True)
    try:
        env.render(0)
    finally:
        env.close()


def check_renders(env_cfg) -> None:
    """Raises ConfigError when EnvPool would abort the process trying to render ``env_cfg``:
    rendering is tried once in a child process first."""
    if choose_backend(env_cfg) != "envpool" or not _needs_opengl(env_cfg.id):
        return
    if supervision.run_to_exit(_render_once, (env_cfg,), "parallel-rl-render-probe") != 0:
        raise ConfigError(
            f"EnvPool cannot render {env_cfg.id} on this machine: MuJoCo found no OpenGL context to draw with "
            f"(it needs a display, or EGL with a GPU driver). Evaluate without --video here, or film on a machine that has one."
        )


class Camera:
    """Pictures of env 0 of a vector env: its rendering where the backend offers one, else
    the agent's own image observations."""

    def __init__(self, env: VecEnv):
        self.env = env
        try:
            env.render(0)
            self.source = "rendered"
        except Exception as exc:  # backends signal "cannot render" with many exception types
            if not env.spec.is_image:
                raise ConfigError(
                    f"Cannot film {env.spec.id} ({env.spec.backend}): it does not render ({type(exc).__name__}: {exc}) "
                    f"and its observations {env.spec.obs_shape} are not images. For a gymnasium environment that "
                    f"draws with pygame, `pip install pygame` and try again."
                ) from None
            self.source = "observations"

    def frame(self, obs: np.ndarray) -> np.ndarray:
        return self.env.render(0) if self.source == "rendered" else _observation_frame(self.env.spec, obs[0])


def evaluate(path: Path, episodes: int, greedy: bool = False, device: str = "cpu", seed: int = 12345,
             video: bool = False, video_path: Path | None = None, video_episodes: int = 1) -> Evaluation:
    """Returns of ``episodes`` complete episodes, the first ones of each of up to 32 envs.

    Each env contributes the same number of episodes, so short episodes are not
    over-represented the way "the first N to finish" would make them. With ``video``, env 0's
    first ``video_episodes`` episodes are also written to ``video_path`` (default: the run's
    videos/ folder) as an MP4 and, for a checkpoint inside a run directory, logged to the
    run's TensorBoard as ``eval/video``.
    """
    from .video import VideoRecorder

    state = ckpt.load(path)
    cfg, _ = from_saved(state["config"])
    torch_device = resolve_device(device)
    # auto judged the training run's length; a few episodes never repay compiling or recording
    # graphs, and a run compiled elsewhere is evaluated eagerly (the same actions) on a machine
    # where inductor cannot build code
    compiles = cfg.perf.compile is True and inductor_builds_code(str(torch_device))
    cfg = replace(cfg, perf=replace(cfg.perf, compile=compiles, cuda_graphs=False))
    torch.manual_seed(seed)  # sampled actions too: the same seed plays the same episodes
    num_envs = min(episodes, MAX_EVAL_ENVS)
    per_env = math.ceil(episodes / num_envs)
    if video:
        check_renders(cfg.env)
    env = make_env(cfg.env, num_envs, seed, render=video)
    film: Video | None = None
    recorder = None
    played = False
    try:
        policy = make_policy(env.spec, cfg, torch_device)
        ckpt.restore_policy(policy, state, path, cfg.env.id)
        policy.prepare_evaluation(cfg)
        counts = np.zeros(num_envs, np.int64)
        returns: list[list[float]] = [[] for _ in range(num_envs)]
        obs = env.reset()
        if video:
            camera = Camera(env)
            fps = ATARI_HZ / cfg.env.frame_skip if env.spec.is_atari else DEFAULT_FPS
            step = int(state["step"])
            film = Video(Path(video_path or default_video_path(path, step)), fps, camera.source, step=step)
            recorder = VideoRecorder(film.path, fps)
            recorder.add(camera.frame(obs))
        tracker = env.tracker

        def filming() -> bool:
            return film is not None and len(film.returns) < video_episodes

        while counts.min() < per_env or filming():
            with torch.inference_mode():
                actions = policy.act(torch.from_numpy(obs).to(torch_device), greedy=greedy)[0].cpu().numpy()
            result = env.step(actions)
            obs = result.obs
            done = tracker.game_done.copy()  # whole games: with episodic life a life lost is no episode end
            if filming():
                recorder.add(camera.frame(obs))  # after an episode's end: the next one's first observation
                if done[0]:
                    film.returns.append(float(tracker.returns[0]))
                    film.lengths.append(int(tracker.lengths[0]))
            for i in np.flatnonzero(done):
                if counts[i] < per_env:
                    returns[i].append(float(tracker.returns[i]))  # counters reset on the next step
                    counts[i] += 1
            tracker.pop()
        played = True
    finally:
        try:
            if recorder is not None:
                recorder.close(keep=played)
        finally:
            env.close()
    if film is not None:
        film.frames = recorder.frames
        film.tensorboard = _log_video(recorder, path, film)
    flat = [r for per in zip(*returns, strict=False) for r in per]
    return Evaluation(path, flat[:episodes], film)


def _log_video(recorder, checkpoint: Path, film: Video) -> Path | None:
    """The run's tb/ folder once ``film`` is logged there as a GIF; None where it is not, and
    ``film.not_logged`` says why (a run read-only to this user keeps its score and its MP4)."""
    from torch.utils.tensorboard import SummaryWriter

    run = run_dir_of(checkpoint)
    summary = recorder.gif_summary(VIDEO_TAG)
    if run is None or summary is None:
        return None
    try:
        check_writable_folder(run / "tb" if (run / "tb").is_dir() else run, "the run's tb/ folder")
    except ConfigError:
        film.not_logged = f"{run / 'tb'} cannot be written"
        return None
    writer = SummaryWriter(str(run / "tb"))
    try:
        writer.file_writer.add_summary(summary, global_step=film.step)
    finally:
        writer.close()
    return run / "tb"
