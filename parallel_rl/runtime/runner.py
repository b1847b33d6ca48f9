"""The runner: builds the algorithm, the batch source, logging and checkpoints around the
learner loop, and trains until the budget, a time limit, a signal or a failure.

Synchronous mode (K = 0 actor processes) runs the actor loop inline: PAAC is exact (no
policy lag) and a seeded CPU run is reproducible. Asynchronous mode (K >= 1) streams
rollouts from actor processes through shared memory; everything else is the same code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import IO

import torch

from .. import checkpoint as ckpt
from .. import distributed
from ..algos import (
    compile_mode,
    make_algorithm,
    native_bf16,
    refuse_unbuildable_compile,
    uses_channels_last,
    with_amp_resolved,
)
from ..algos.base import ReplayCadenceConfig
from ..config import Config, ConfigError, kept_config_name, save_yaml, write_atomically
from ..contracts import Algorithm, BatchSource
from ..envs import env_spec
from ..metrics import EnvEfficiency, Metrics, UpdateStats
from . import signals
from .layout import check_policy_lag_fits, resolve_procs, thread_layout
from .learner import UpdateWindow, learn
from .pipeline import ActorProcessPool, InlineSource


def resolve_device(name: str, key: str = "device") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} = {name!r} but CUDA is not available on this machine; use {key}=cpu or auto.")
    if device.type == "cuda" and device.index is not None and device.index >= (count := torch.cuda.device_count()):
        raise ConfigError(f"{key} = {name!r} but this machine has {count} GPU{'s' if count > 1 else ''} "
                          f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}); use one of those, cuda, auto or cpu.")
    return device


def resolve_actors_device(name: str, learner: torch.device) -> torch.device:
    """The actor processes' device: ``actors.device``, where ``auto`` or a bare ``cuda`` on a
    GPU machine is the learner's own GPU (each rank's ``cuda:LOCAL_RANK``), so that acting runs
    beside its learner: a bare ``cuda`` in a spawned process is GPU 0, where every rank's
    actors would crowd beside rank 0's learner."""
    device = resolve_device(name, "actors.device")
    if device.type == "cuda" and device.index is None:
        return learner if learner.type == "cuda" else distributed.rank_device(torch.device("cuda", 0))
    return device


COMPILED = {None: "", "default": ", network compiled (perf.compile)", "reduce-overhead": ", network in CUDA graphs (perf.cuda_graphs)"}


def amp_note(cfg: Config, device: torch.device, actor_device: torch.device | None = None, auto: bool = False) -> str:
    """The layout line's word on ``perf.amp`` (``cfg``'s after ``with_amp_resolved``; ``auto``: the
    user left the choice to it): which forward passes run in bfloat16, and where a device has no
    bf16 units of its own, what that means (the learner: emulated, slower than float32; actor
    processes, ``actor_device``: they keep float32)."""
    if cfg.perf.amp != "bf16":
        return ""
    note = ", forward passes in bf16 (perf.amp" + (": auto, this CPU has bf16 units" if auto else "")
    if not native_bf16(device):
        note += f"; this {device.type} has no bf16 units of its own, so the learner's are emulated, slower than float32"
    if actor_device is not None and not native_bf16(actor_device):
        note += f"; actor processes act in float32: their {actor_device.type} has no bf16 units"
    return note + ")"


def learner_device(cfg: Config, probe_compile: bool = True) -> torch.device:
    """The learner's device, refusing the switches that need another (and an acting device
    this machine lacks: actor processes would fail on it only once started). Without
    ``probe_compile`` the caller checks that ``perf.compile: true`` can build code itself, on
    the GPU it will use (``refuse_unbuildable_compile``)."""
    resolve_device(cfg.actors.device, "actors.device")
    device = resolve_device(cfg.device)
    if cfg.perf.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"perf.cuda_graphs = true records CUDA graphs, but the learner runs on {device} (device = "
                          f"{cfg.device!r}{', and CUDA is not available here' if cfg.device == 'auto' else ''}): "
                          "use device=cuda on a machine with a GPU, or perf.cuda_graphs=false.")
    if probe_compile:
        refuse_unbuildable_compile(cfg, device)
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
    steps: int  # counted from the first update, like ``seconds``: the basis of ``sps``
    final_step: int  # the run's step counter at the end
    updates: int
    seconds: float
    recent_return: float
    episodes: int
    stop_signal: int | None  # the signal (SIGINT, SIGTERM) that stopped the run, if one did
    checkpoint: Path | None
    env_efficiency: float = float("nan")  # perf/env_efficiency over the steady state (from the second update on)

    @property
    def interrupted(self) -> bool:
        return self.stop_signal is not None

    @property
    def sps(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


class Runner:
    """Trains one configuration in one run directory (new or resumed): builds the algorithm,
    the batch source, logging and checkpoints around the learner loop (``learner.learn``)
    and stops it at the budget, a time limit, a signal or a failure."""

    def __init__(self, cfg: Config, run_dir: Path, resumption: ckpt.Resumption | None = None, write_logs: bool = True,
                 algorithm: Callable[..., Algorithm] | None = None):
        """``algorithm(spec, cfg, device)`` builds the learner's algorithm (default: the one
        ``cfg.algo.name`` names); actor processes always build ``cfg.algo.name``'s Policy."""
        self.cfg = cfg
        self.make_algorithm = algorithm or make_algorithm
        self.run_dir = Path(run_dir)
        self.resumption = resumption
        self.write_logs = write_logs
        self._stop_signal: int | None = None
        self._stopped_at_start = False
        self._deadline: float | None = None
        self._run_lock: IO[str] | None = None  # held while this process writes the run directory

    def _request_stop(self, signum, _frame) -> None:
        if self._stop_signal is not None:
            # a rank hears one Ctrl-C twice, from the terminal and again from torchrun, which
            # kills it after 30 s itself: a rank stops after the update, whatever arrives after
            if distributed.world().active:
                return
            raise signals.Interrupted(signum)  # a second signal: stop now
        self._stop_signal = signum

    def _should_stop(self) -> bool:
        return self._stop_signal is not None or (self._deadline is not None and time.perf_counter() >= self._deadline)

    def log(self, text: str) -> None:
        if self.cfg.logging.console and distributed.world().main:  # one run, one console
            print(text, flush=True)

    def run(self, max_seconds: float | None = None) -> RunSummary:
        """Train, until the budget or ``max_seconds`` after the first update and at least one update more (``bench``'s time limit).

        SIGINT and SIGTERM are handled from the first line: one arriving during start-up
        skips whatever has not started yet and still ends with a checkpoint."""
        with signals.handled(self._request_stop):
            try:
                return self._run(max_seconds)
            finally:
                if self._run_lock is not None:
                    self._run_lock.close()
                    self._run_lock = None

    def _run(self, max_seconds: float | None) -> RunSummary:
        device = learner_device(self.cfg, probe_compile=False)
        world = distributed.init(self.cfg, device)
        try:
            refuse_unbuildable_compile(self.cfg, distributed.rank_device(device))  # on this rank's own GPU
            summary, algo = self._run_rank(distributed.rank_device(device), max_seconds)
            # on every rank, signalled or not: they stopped after the same update (a signal is
            # agreed on at the exchange), so the replicas are equal however each one's stop came about
            distributed.check_replicas(algo.state_dict())
            distributed.barrier()  # no rank leaves the group while another still talks to it
            return summary
        finally:
            if world.active:
                distributed.shutdown()

    def _run_rank(self, device: torch.device, max_seconds: float | None) -> tuple[RunSummary, Algorithm]:
        """This rank's share of the run (the whole run on one rank)."""
        cfg, world = self.cfg, distributed.world()
        spec = env_spec(cfg.env)
        # this rank's envs, seeds and learning rate, and the learner's precision for its actor processes too
        local = with_amp_resolved(distributed.rank_config(cfg), spec, device)
        local = replace(local, actors=replace(local.actors, device=str(resolve_actors_device(local.actors.device, device))))
        self.write_logs = self.write_logs and world.main
        procs = resolve_procs(local)
        check_policy_lag_fits(local, procs)  # before the run directory is written
        learner_threads, env_threads = thread_layout(local, procs)
        torch.set_num_threads(learner_threads)
        torch.manual_seed(local.seed)
        algo = self.make_algorithm(spec, local, device)
        step = updates = 0
        if (resumed := self.resumption) is not None:
            ckpt.restore(algo, resumed.state, resumed.checkpoint, cfg.env.id)
            step, updates = resumed.step, int(resumed.state["updates"])
            ckpt.restore_rng(resumed.state, device)
            if not world.main:  # the checkpoint holds rank 0's generators: this rank draws a stream of its own
                torch.manual_seed(local.seed + step)
        # the schedules (exploration, LR) where this run stands, before actor processes take the
        # weights: a checkpoint holds them as its last update left them, for that run's budget
        algo.set_progress(step / cfg.total_steps)
        distributed.broadcast_state(algo.state_dict())  # one policy: every replica starts from rank 0's weights
        refusal = None
        if self.write_logs:
            try:
                self._claim_run_directory()
            except ConfigError as exc:  # another launch took it since the launcher looked
                refusal = exc
        distributed.refuse_together(refusal, "the run directory")
        layout = (f"layout: {procs} actor processes x {local.actors.num_envs // max(procs, 1)} envs" if procs
                  else "layout: synchronous (K = 0)")
        if world.active:
            layout = f"layout: {world.size} ranks x {procs or 'no'} actor processes x {local.actors.num_envs} envs per rank"
        auto = cfg.perf.amp == "auto"
        if world.main:
            self.log(f"{layout} | {cfg.actors.num_envs} envs of {cfg.env.id} ({spec.backend}) in all, {env_threads} env threads "
                     f"{'per actor process' if procs else ''} | learner on {device} with {learner_threads} torch threads"
                     f"{COMPILED[compile_mode(local, spec, device)]}"
                     f"{', convolutions channels-last (perf.channels_last)' if uses_channels_last(local, spec, device) else ''}"
                     f"{amp_note(local, device, torch.device(local.actors.device) if procs else None, auto)} | "
                     f"{os.cpu_count()} cores")
            if world.active and isinstance(cfg.algo, ReplayCadenceConfig):
                minibatch = cfg.replay.minibatch_size
                self.log(f"replay: one per rank of {cfg.replay.capacity:,} transitions; each gradient step averages "
                         f"{world.size} ranks' minibatches of {minibatch}: an effective minibatch of {world.size * minibatch}")
        if self.write_logs:
            self.log(f"run directory: {self.run_dir}")
        source = None
        # stopped already (on any rank: all skip alike): no actor processes to start, straight to the checkpoint
        self._stopped_at_start = distributed.any_rank(self._stop_signal is not None, "agreeing to start")
        if not self._stopped_at_start:
            if procs:
                source = ActorProcessPool(local, spec, algo, device, procs, self.run_dir if self.write_logs else None,
                                          env_threads, start_version=updates, log=self.log)
            else:
                source = InlineSource(local, spec, algo, device, env_threads)
        try:
            return self._train(algo, source, step, updates, max_seconds, device), algo
        finally:
            if source is not None:
                source.close()

    def _claim_run_directory(self) -> None:
        """Hold the run directory (refused where another process does) and write its config.yaml."""
        resumed = self.resumption
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._run_lock = ckpt.lock_run_directory(self.run_dir)
            if resumed is not None and resumed.changed:  # the steps so far were trained with the old settings
                kept = self.run_dir / kept_config_name(resumed.step)
                if not kept.exists():  # a resume stopped before its first checkpoint already kept them
                    write_atomically(kept, (self.run_dir / "config.yaml").read_bytes())
            save_yaml(self.cfg, self.run_dir / "config.yaml")
        except OSError as exc:
            raise ConfigError(f"Cannot create the run directory {str(self.run_dir)!r} and its config.yaml: {exc.strerror}. "
                              "Choose another with --run-dir or logging.run_root.") from None

    def _train(self, algo: Algorithm, source: BatchSource | None, step: int, updates: int, max_seconds: float | None,
               device: torch.device) -> RunSummary:
        cfg = self.cfg
        metrics = Metrics(self.run_dir / "tb" if self.write_logs else None, cfg.total_steps, cfg.logging.interval_s,
                          cfg.logging.return_window, cfg.logging.console and self.write_logs, start_step=step)
        stats = UpdateStats()
        if self.resumption is not None:
            metrics.recent_returns.extend(self.resumption.state.get("recent_returns", []))
            stats.nonfinite_updates = int(self.resumption.state.get("nonfinite_updates", 0))
        metrics.log_run_start(cfg, step)
        checkpoints = ckpt.CheckpointManager(self.run_dir / "checkpoints", cfg.checkpoint.keep_last) if self.write_logs else None
        stats.lr = algo.set_progress(step / cfg.total_steps)

        def training_state() -> dict:
            return ckpt.training_state(algo, cfg, step, updates, metrics.recent_returns, stats.nonfinite_updates, device)

        def scalars() -> dict[str, float]:
            return {**stats.scalars(), **(source.diagnostics() if source is not None else {})}

        interval = cfg.checkpoint.interval_steps
        next_checkpoint = (step // interval + 1) * interval if interval else None
        # throughput and max_seconds count from the first update: process start-up, EnvPool
        # creation and the first rollout are start-up, not steady state
        start, start_step, first_update = time.perf_counter(), step, updates
        env_efficiency = EnvEfficiency()  # like sps, of the steady state: from the second update on
        last_path: Path | None = None
        disk_refused = False
        window = UpdateWindow()
        try:
            records = learn(algo, source, cfg, step, updates, self._should_stop, window) if source is not None else ()
            for record in records:
                step, updates = record.step, record.updates
                window.open = False
                stats.add(record)
                if updates == first_update + 1:
                    start, start_step = time.perf_counter(), step
                    metrics.restart_clock(step)
                else:
                    env_efficiency.add(record.delivery)
                    # the time limit runs from the first update, but stops only once one more is
                    # measured: a slow update on a busy machine would otherwise read 0 steps/s
                    if max_seconds is not None and updates == first_update + 2:
                        self._deadline = start + max_seconds
                metrics.add_episodes(record.delivery.returns, record.delivery.lengths, step)
                if self.write_logs and metrics.due():
                    metrics.write(step, scalars())
                if checkpoints is not None and next_checkpoint is not None and step >= next_checkpoint:
                    metrics.persist_episodes()
                    last_path = checkpoints.save(training_state(), step)
                    next_checkpoint += interval
            # every rank left the loop after the same update (agreed at the exchange), and stops
            # for the same reason: a signal that one rank alone heard
            self._stop_signal = distributed.agreed_signal(self._stop_signal)
        except ckpt.CheckpointWriteError:
            disk_refused = True
            raise
        finally:
            elapsed = time.perf_counter() - start
            # once the disk refused a checkpoint, writing anything more on the way out would fail
            # again or hide why the run stopped: skip it, and let closing the TensorBoard file fail quietly
            with contextlib.suppress(OSError) if disk_refused else contextlib.nullcontext():
                try:
                    # a run stopped by a signal before its first update still gets a checkpoint (of
                    # its initial state), so the run directory can be resumed rather than being a dead end
                    wanted = (updates > 0 or self._stop_signal is not None or self._stopped_at_start) and not disk_refused
                    if wanted and window.open and checkpoints is not None:
                        wanted = False
                        newest = last_path or ckpt.latest(checkpoints.directory)
                        self.log(f"stopped inside an update: no final checkpoint, as it would not match step {step:,}; "
                                 f"the newest is {newest or 'none'}")
                    if checkpoints is not None and wanted and (last_path is None or last_path.name != f"step_{step}.pt"):
                        last_path = checkpoints.save(training_state(), step)
                    if self.write_logs and updates > first_update and not disk_refused:
                        metrics.write(step, scalars())
                finally:
                    metrics.close()
        if self._stop_signal is not None:
            self.log(f"stopped by {signal.Signals(self._stop_signal).name}; final checkpoint {last_path}")
        return RunSummary(
            steps=step - start_step,
            final_step=step,
            updates=updates,
            seconds=elapsed,
            recent_return=metrics.recent_mean_return,
            episodes=metrics.episodes,
            env_efficiency=env_efficiency.fraction,
            stop_signal=self._stop_signal,
            checkpoint=last_path,
        )
