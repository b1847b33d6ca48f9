"""The runner: builds env, algorithm, logging and checkpoints, then trains until the budget.

Synchronous mode (no actor processes): the actor loop runs inline, so PAAC is exact (no
policy lag) and a seeded CPU run is reproducible.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .. import checkpoint as ckpt
from ..algos import make_algorithm
from ..algos.base import Batch
from ..config import Config, save_yaml
from ..envs import default_num_threads, make_env
from ..metrics import Metrics
from .rollout import RolloutCollector

CHECKPOINT_FORMAT = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from ..config import ConfigError

        raise ConfigError(f"device = {name!r} but CUDA is not available on this machine; use device=cpu or auto.")
    return device


def new_run_dir(cfg: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.logging.run_root) / f"{cfg.env.id.replace('/', '_')}__{cfg.algo.name}__s{cfg.seed}__{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


@dataclass
class RunSummary:
    steps: int
    updates: int
    seconds: float
    recent_return: float
    episodes: int
    interrupted: bool
    checkpoint: Path | None

    @property
    def sps(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


class Runner:
    """Trains one configuration in one run directory (new or resumed)."""

    def __init__(self, cfg: Config, run_dir: Path, resume_state: dict[str, Any] | None = None, write_logs: bool = True):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume_state = resume_state
        self.write_logs = write_logs
        self._stop_signal: int | None = None

    def _layout(self, device: torch.device, env_threads: int) -> str:
        cores = os.cpu_count() or 1
        return (
            f"layout: synchronous (1 process) | {self.cfg.actors.num_envs} envs of {self.cfg.env.id} on "
            f"{self.env.spec.backend} with {env_threads} threads | torch {torch.get_num_threads()} threads | "
            f"learner on {device} | {cores} cores"
        )

    def _request_stop(self, signum, _frame) -> None:
        if self._stop_signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum

    def run(self, max_seconds: float | None = None) -> RunSummary:
        cfg = self.cfg
        torch.set_num_threads(cfg.torch_threads or os.cpu_count() or 1)
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.device)
        env_threads = cfg.actors.num_threads or default_num_threads(cfg.actors.num_envs)
        self.env = env = make_env(cfg.env, cfg.actors.num_envs, cfg.seed, env_threads)
        try:
            return self._train(device, env_threads, max_seconds)
        finally:
            env.close()

    def _train(self, device: torch.device, env_threads: int, max_seconds: float | None) -> RunSummary:
        cfg, env = self.cfg, self.env
        algo = make_algorithm(env.spec, cfg, device)
        step = updates = 0
        if self.resume_state is not None:
            state = self.resume_state
            algo.load_state_dict(state["algo"])
            step, updates = int(state["step"]), int(state["updates"])
            torch.set_rng_state(state["torch_rng"])
        if self.write_logs:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, self.run_dir / "config.yaml")
        metrics = Metrics(
            self.run_dir / "tb" if self.write_logs else None,
            cfg.total_steps,
            cfg.logging.interval_s,
            cfg.logging.return_window,
            cfg.logging.console and self.write_logs,
            start_step=step,
        )
        if self.resume_state is not None:
            metrics.recent_returns.extend(self.resume_state.get("recent_returns", []))
        checkpoints = ckpt.CheckpointManager(self.run_dir / "checkpoints", cfg.checkpoint.keep_last) if self.write_logs else None
        if cfg.logging.console and self.write_logs:
            print(self._layout(device, env_threads), flush=True)
            print(f"run directory: {self.run_dir}", flush=True)

        collector = RolloutCollector(env, cfg.algo.rollout_length)
        non_blocking = device.type == "cuda"

        def policy(obs):
            return algo.act(torch.from_numpy(obs).to(device, non_blocking=non_blocking)).cpu().numpy()

        def state() -> dict[str, Any]:
            return {
                "format": CHECKPOINT_FORMAT,
                "algo": algo.state_dict(),
                "step": step,
                "updates": updates,
                "config": cfg.to_dict(),
                "torch_rng": torch.get_rng_state(),
                "recent_returns": list(metrics.recent_returns),
            }

        def scalars() -> dict[str, float]:
            nonlocal update_seconds
            step_s, policy_s = collector.pop_timings()
            out = {tag: float(v) for tag, v in result.items()}
            out.update({
                "charts/learning_rate": lr,
                "perf/step_ms": 1e3 * step_s,
                "perf/inference_ms": 1e3 * policy_s,
                "perf/update_ms": 1e3 * update_seconds,
            })
            update_seconds = 0.0
            return out

        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
        batch_steps = cfg.actors.num_envs * cfg.algo.rollout_length
        next_checkpoint = (step // cfg.checkpoint.interval_steps + 1) * cfg.checkpoint.interval_steps if cfg.checkpoint.interval_steps else None
        start, start_step = time.perf_counter(), step
        update_seconds = 0.0
        last_path: Path | None = None
        result: dict[str, torch.Tensor] = {}
        lr = algo.set_progress(step / cfg.total_steps)
        try:
            while step < cfg.total_steps and self._stop_signal is None:
                if max_seconds is not None and time.perf_counter() - start >= max_seconds:
                    break
                arrays = collector.collect(policy)
                began = time.perf_counter()
                lr = algo.set_progress(step / cfg.total_steps)
                result = algo.update(Batch.from_numpy(arrays, device))
                update_seconds += time.perf_counter() - began
                step += batch_steps
                updates += 1
                metrics.add_episodes(*env.tracker.pop())
                if self.write_logs and metrics.due():
                    metrics.write(step, scalars())
                if checkpoints is not None and next_checkpoint is not None and step >= next_checkpoint:
                    last_path = checkpoints.save(state(), step)
                    next_checkpoint += cfg.checkpoint.interval_steps
        finally:
            elapsed = time.perf_counter() - start
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if checkpoints is not None and updates > 0:
                if last_path is None or last_path.name != f"step_{step}.pt":
                    last_path = checkpoints.save(state(), step)
            if self.write_logs and result:
                metrics.write(step, scalars())
            metrics.close()
        if self._stop_signal is not None and cfg.logging.console:
            print(f"stopped by {signal.Signals(self._stop_signal).name}; final checkpoint {last_path}", flush=True)
        return RunSummary(
            steps=step - start_step,
            updates=updates,
            seconds=elapsed,
            recent_return=metrics.recent_mean_return,
            episodes=metrics.episodes,
            interrupted=self._stop_signal is not None,
            checkpoint=last_path,
        )


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
