"""Checkpoints: their format, atomic writes (temporary file, fsync, rename), loading with
``weights_only=True``, and resuming a run directory from its newest one."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from .config import (
    Config,
    ConfigError,
    flatten,
    from_saved,
    load_yaml,
    set_override,
    set_override_value,
    write_atomically,
)

CHECKPOINT_RE = re.compile(r"^step_(\d+)\.pt$")

# 1: the algorithm's acting network under "net", acting state (epsilon) inside it.
# 2: the algorithm's Policy (contracts.py) under "policy": network and acting state together.
FORMAT = 2


RUN_LOCK = ".lock"


def lock_run_directory(run_dir: Path) -> IO[str]:
    """Hold ``run_dir`` for this process until the returned file is closed, or refuse (exit 2)
    while another process holds it: two runs writing one directory would each delete the
    other's checkpoints (each keeps only its newest) and interleave their logs. An advisory
    lock (flock) that the kernel drops when its process ends, however it ends: a killed run
    leaves nothing to clean up. Where the filesystem cannot lock, the run goes on unlocked."""
    handle, locked = _try_lock(run_dir, "a+")
    if locked:  # named for the next process that finds it held
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    return handle


def refuse_a_run_directory_in_use(run_dir: Path) -> None:
    """Exit 2 now, rather than once started, where another process holds ``run_dir``; the
    directory is left exactly as it was (read-only: a lock needs no write permission)."""
    if (Path(run_dir) / RUN_LOCK).is_file():
        _try_lock(run_dir, "r")[0].close()


def _try_lock(run_dir: Path, mode: str) -> tuple[IO[str], bool]:
    """The lock file opened in ``mode`` and whether it is locked now (False: the filesystem cannot lock)."""
    handle = open(Path(run_dir) / RUN_LOCK, mode)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigError(f"The run directory {str(run_dir)!r} is in use by another parallel-rl process (pid {holder}): "
                          "two runs writing one directory would delete each other's checkpoints. Wait for that run "
                          "to end (or stop it), or choose another --run-dir.") from None
    except OSError:
        return handle, False
    return handle, True


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not fit; the message names the file."""


class CheckpointWriteError(RuntimeError):
    """The disk refused a checkpoint (full, read-only, ...); the message names the file and why."""


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Never leaves a partial file at ``path``: a crash mid-write keeps the previous one.

    The state is serialised in memory first, so the only OS errors come from our own
    write, fsync and rename, with their errno intact (torch's writer would rewrap them).
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        write_atomically(path, buffer.getbuffer())
    except OSError as exc:
        code = f" [{errno.errorcode[exc.errno]}]" if exc.errno in errno.errorcode else ""
        raise CheckpointWriteError(f"Cannot write checkpoint {str(path)!r}: {exc.strerror or exc}{code}.") from None


def load(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        # torch's own text may advise loading with weights_only=False, which would run whatever the file holds
        detail = str(exc).splitlines()[0] if str(exc) and "weights_only" not in str(exc) else "no detail"
        earlier = [p for p in list_checkpoints(path.parent) if _step_of(p) < _step_of(path)]
        fallback = (f" The one before it, {str(earlier[-1])!r}, may be good: move {path.name} aside and resume again."
                    if earlier else "")
        raise CheckpointError(
            f"Checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {detail}); "
            f"it is truncated, corrupt or not a parallel-rl checkpoint.{fallback}"
        ) from None
    if not (isinstance(state, dict) and isinstance(state.get("algo"), dict) and isinstance(state.get("step"), int)
            and isinstance(state.get("config"), dict)):
        raise CheckpointError(f"Checkpoint {str(path)!r} is not a parallel-rl checkpoint (it lacks the algo, step and config entries).")
    written = state.get("format", 1)
    if not isinstance(written, int) or not 1 <= written <= FORMAT:
        raise CheckpointError(f"Checkpoint {str(path)!r} has format {written!r}, but this parallel-rl reads formats 1 to {FORMAT}: "
                              "it was written by a newer version; upgrade parallel-rl to read it.")
    if (damaged := _damaged_entry(state)) is not None:
        raise CheckpointError(f"Checkpoint {str(path)!r} is damaged: {damaged}. It is not as parallel-rl writes them "
                              "(edited, or written by another program): resume from an earlier checkpoint.")
    return state


def _damaged_entry(state: dict[str, Any]) -> str | None:
    """The first entry of a loaded checkpoint that is not as :func:`training_state` writes it, if any."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    config = state["config"]
    sections = [name for name in ("env", "algo", "optim", "actors", "model", "replay", "perf", "logging", "checkpoint")
                if name in config and not isinstance(config[name], dict)]
    if sections:
        return f"its config's {', '.join(sections)} should be a mapping of settings"
    checks = [  # each entry may be absent (eval reads checkpoints of a policy alone), not malformed
        (isinstance(config.get("env", {}).get("id", ""), str), "its config's env.id should be an environment id"),
        ("updates" not in state or (isinstance(state["updates"], int) and not isinstance(state["updates"], bool)),
         "its updates should be a count"),
        ("torch_rng" not in state or (isinstance(state["torch_rng"], torch.Tensor) and state["torch_rng"].dtype == torch.uint8),
         "its torch_rng should be the random number generator's state (a byte tensor)"),
        ("recent_returns" not in state or (isinstance(state["recent_returns"], list)
                                           and all(map(number, state["recent_returns"]))),
         "its recent_returns should be a list of numbers"),
    ]
    return next((problem for fine, problem in checks if not fine), None)


def policy_state(algo_state: dict[str, Any], policy: torch.nn.Module) -> dict[str, Any]:
    """The Policy's entry of an algorithm's state, from either format: format 1 kept the acting
    network under "net" with acting state as its buffers; each of its keys is the Policy's key
    of the same name, or that key under the Policy's ``net`` attribute."""
    if "policy" in algo_state:
        return algo_state["policy"]
    expected = set(policy.state_dict())
    return {(key if key in expected else f"net.{key}"): value for key, value in algo_state["net"].items()}


def _step_of(path: Path) -> int:
    """The step in a periodic checkpoint's name (``step_N.pt``); -1 for any other file."""
    match = CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match else -1


def list_checkpoints(directory: Path) -> list[Path]:
    """Periodic checkpoints in ``directory``, oldest first."""
    if not Path(directory).is_dir():
        return []
    found = [(step, p) for p in Path(directory).iterdir() if (step := _step_of(p)) >= 0]
    return [p for _, p in sorted(found)]


def latest(directory: Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def find(path: Path) -> Path:
    """A checkpoint file itself, or the newest one inside a run directory."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"{str(path)!r} does not exist: give a run directory (runs/...) or a checkpoint file (.pt).")
    newest = latest(path / "checkpoints") or latest(path)
    if newest is None:
        raise CheckpointError(f"No checkpoint in {str(path)!r}: expected files named step_<N>.pt in {str(path / 'checkpoints')!r}.")
    return newest


class CheckpointManager:
    """Periodic and final checkpoints in ``run_dir/checkpoints``, keeping the newest ``keep_last``."""

    def __init__(self, directory: Path, keep_last: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep_last = keep_last

    def save(self, state: dict[str, Any], step: int) -> Path:
        path = self.directory / f"step_{step}.pt"
        try:
            save_atomic(state, path)
        except CheckpointWriteError as exc:
            newest = latest(self.directory)
            intact = f"The newest intact checkpoint is {str(newest)!r}." if newest else "No earlier checkpoint exists."
            raise CheckpointWriteError(f"{exc} Nothing was overwritten: {intact}") from None
        for old in list_checkpoints(self.directory)[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path


def _check_env(state: dict[str, Any], path: Path, env_id: str) -> str:
    trained_on = state.get("config", {}).get("env", {}).get("id", "?")
    if trained_on != env_id:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} was trained on {trained_on}, but {env_id} was requested: "
            f"a checkpoint only continues or evaluates the environment it was trained on."
        )
    return trained_on


def restore_policy(policy: torch.nn.Module, state: dict[str, Any], path: Path, env_id: str) -> None:
    """Load only the Policy from a checkpoint (evaluation); refusals as :func:`restore`."""
    trained_on = _check_env(state, path, env_id)
    try:
        policy.load_state_dict(policy_state(state["algo"], policy))
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split())[:600]
        raise CheckpointError(
            f"Checkpoint {str(path)!r} (trained on {trained_on}) does not fit the network built for {env_id}: {detail}"
        ) from None


def restore(algo, state: dict[str, Any], path: Path, env_id: str) -> None:
    """Load ``state['algo']`` into ``algo``, built for ``env_id``; a checkpoint trained on
    another environment, or one whose shapes do not fit, is refused naming the file, both
    environments and the mismatch."""
    trained_on = _check_env(state, path, env_id)
    try:
        algo_state = dict(state["algo"])
        algo_state["policy"] = policy_state(algo_state, algo.policy())
        algo.load_state_dict(algo_state)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split())[:600]
        raise CheckpointError(
            f"Checkpoint {str(path)!r} (trained on {trained_on}) does not fit the network built for {env_id}: {detail}"
        ) from None


def training_state(algo, cfg: Config, step: int, updates: int, recent_returns: Iterable[float],
                   nonfinite_updates: int = 0, device: torch.device | None = None) -> dict[str, Any]:
    """Everything a resume needs, in the current format; ``device`` is the learner's."""
    return {
        "format": FORMAT,
        "algo": algo.state_dict(),
        "step": step,
        "updates": updates,
        "config": cfg.to_dict(),
        "torch_rng": torch.get_rng_state(),
        # the learner's draws on a GPU (SAC's sampling noise, a replay sampled on the device) come
        # from its GPU's generator, which torch.manual_seed at resume would otherwise rewind
        "cuda_rng": torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None,
        "recent_returns": list(recent_returns),
        "nonfinite_updates": nonfinite_updates,  # diag/nonfinite_updates counts over the whole run
    }


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    """The random number generators as the checkpoint left them: the CPU's, and the saved
    learner GPU's on the resuming learner's GPU (``device``), whichever its number and however
    many GPUs this machine has (a GPU run resumed on a CPU keeps its CPU generator's alone)."""
    torch.set_rng_state(state["torch_rng"])
    saved = state.get("cuda_rng")
    if saved is None or device is None or device.type != "cuda":
        return
    if isinstance(saved, torch.Tensor):
        torch.cuda.set_rng_state(saved, device)
    elif saved and torch.cuda.device_count() == len(saved):  # checkpoints of every GPU's, before 2026-12-07
        torch.cuda.set_rng_state_all(saved)


@dataclass
class Resumption:
    """A run directory about to continue from its newest checkpoint."""

    run_dir: Path
    checkpoint: Path
    state: dict[str, Any]
    config: Config  # the run's own config, with the changes a resume allows applied
    notice: str | None  # one line when the saved config had to be migrated to this version's layout
    changed: list[str] = field(default_factory=list)  # "key: saved -> now" for each setting the resume changes

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def finished(self) -> bool:
        return self.step >= self.config.total_steps


def resume(run_dir: Path, changes: dict[str, Any], overrides: list[str]) -> Resumption:
    """Load ``run_dir``'s config and newest checkpoint; ``changes`` (dotted key -> value, the
    named flags a resume accepts) and ``--set`` ``overrides`` are applied and validated."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume {str(run_dir)!r}: no config.yaml there, so it is not a parallel-rl run directory.")
    path = find(run_dir)
    state = load(path)
    if "torch_rng" not in state or "updates" not in state:  # what a training run writes, and a resume continues from
        raise CheckpointError(f"Checkpoint {str(path)!r} holds a policy but not a training run's state (its update count "
                              "and random number generator): it can be evaluated, not resumed.")
    saved_config = load_yaml(run_dir / "config.yaml")
    if not saved_config:  # from_saved would read the defaults (Pong-v5) as the run's settings
        raise ConfigError(f"--resume {str(run_dir)!r}: its config.yaml is empty, so the run's settings are unknown; put "
                          "back the config.yaml the run wrote and resume again.")
    cfg, notice = from_saved(saved_config)
    saved = flatten(cfg.to_dict())
    for key, value in changes.items():
        set_override_value(cfg, key, value)
    for assignment in overrides:
        set_override(cfg, assignment)
    cfg.validate()
    _check_env(state, path, cfg.env.id)
    # what the checkpoint's state belongs to: another algorithm's weights or another optimizer's
    # moments and preconditioners would be read as this one's
    for section, requested, why in (
            ("algo", cfg.algo.name, "a resume continues the run's own algorithm. Start a new run for another one (its "
                                    "weights cannot carry over: --config with --run-dir of a new directory)."),
            ("optim", cfg.optim.name, "a resume continues with the run's own optimizer, whose state (moments, "
                                      "preconditioners) the checkpoint holds. Drop the optim.name override, or start a new run.")):
        trained_with = state["config"].get(section, {}).get("name")
        if trained_with is not None and trained_with != requested:
            raise CheckpointError(f"Checkpoint {str(path)!r} was trained with {section}.name = {trained_with!r}, but "
                                  f"{requested!r} was requested: {why}")
    now = flatten(cfg.to_dict())
    changed = [f"{key}: {saved[key]!r} -> {now[key]!r}" for key in now if key in saved and now[key] != saved[key]]
    return Resumption(run_dir, path, state, cfg, notice, changed)
