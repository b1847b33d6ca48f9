"""Throughput: raw env stepping vs the pipeline vs full training, same envs, one run.

Three figures: raw agent steps/s of the run's backend (random actions, no Python per env, with the
EnvPool threads the actors have between them, at most the cores: ``actor_threads``),
pipeline steps/s (the run with ``TransportProbe`` as its algorithm: a uniformly random
Policy and an update that learns nothing, so it measures transport: efficiency) and
training steps/s (end-to-end efficiency). The probe is injected as an algorithm, named by
its import path like any algorithm outside the registry, so actor processes build its
Policy themselves: nothing is passed down the runtime but the config. For Atari, raw
stepping is also measured with the other installed backend (EnvPool or ALE's vector env),
interleaved with the rest, so the two backends are compared side by side.

Raw EnvPool throughput on a shared machine drifts by about 10% between runs, so the two
measurements are interleaved (raw, train, raw, train, ...) and each reduced to its median;
the ratio of medians is the figure to quote.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch

from .algos.policies import UniformPolicy
from .config import AlgoConfig, Config, algo_section
from .contracts import Batch, Policy, UpdateResult
from .envs import EnvSpec, ale_games, choose_backend, envpool_ids, make_env
from .runtime import signals

TRANSPORT_PROBE = "parallel_rl.bench:TransportProbe"
LIVE_TOLERANCE = 0.1  # how far the live env efficiency may sit from the training/raw ratio


class TransportProbe:
    """The pipeline measurement's algorithm: a :class:`UniformPolicy` and an update that
    learns nothing, for observations and actions of any kind."""

    name = "transport_probe"
    config_class = AlgoConfig
    max_policy_lag: int | None = None
    continuous_actions = None  # either kind

    @classmethod
    def make_policy(cls, spec: EnvSpec, cfg: Config) -> UniformPolicy:
        return UniformPolicy(spec)

    def __init__(self, spec: EnvSpec, cfg: Config, device: torch.device):
        self.acting = UniformPolicy(spec).to(device)

    def policy(self) -> UniformPolicy:
        return self.acting

    def update(self, batch: Batch) -> UpdateResult:
        return UpdateResult()

    def set_progress(self, fraction: float) -> float:
        return 0.0

    def state_dict(self) -> dict:
        return {"policy": self.acting.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.acting.load_state_dict(state["policy"])


class Frozen:
    """An algorithm that acts with ``algo``'s Policy and learns nothing: the cost of acting
    with the network (inference) without the cost of learning."""

    def __init__(self, algo):
        self.algo = algo

    def policy(self) -> Policy:
        return self.algo.policy()

    def update(self, batch: Batch) -> UpdateResult:
        return UpdateResult()

    def set_progress(self, fraction: float) -> float:
        return 0.0

    def state_dict(self) -> dict:
        return self.algo.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.algo.load_state_dict(state)


def transport_config(cfg: Config) -> Config:
    """``cfg`` with the transport probe as its algorithm (same envs, layout and rollout length)."""
    return replace(cfg, algo=algo_section(None, {"name": TRANSPORT_PROBE, "rollout_length": cfg.algo.rollout_length}))


def raw_env_sps(cfg: Config, seconds: float, num_threads: int) -> float:
    """Agent steps/s of the bare vectorised env with random actions (no per-env Python)."""
    env = make_env(cfg.env, cfg.actors.num_envs, cfg.seed, num_threads)
    try:
        env.reset()
        rng = np.random.default_rng(cfg.seed)
        n = cfg.actors.num_envs
        if env.spec.discrete:
            actions = rng.integers(env.spec.num_actions, size=(64, n)).astype(np.int32)
        else:
            actions = rng.uniform(-1, 1, size=(64, n, *env.spec.action_space.shape)).astype(np.float32)
        raw = env._env
        # EnvPool steps once per call where the env repeats an action (VecEnv repeats it), so
        # an agent step is env.action_repeat of its steps; gymnasium's envs repeat inside
        env_steps_per_agent_step = cfg.env.action_repeat if env.spec.backend == "envpool" else 1
        steps, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            raw.step(actions[steps % 64])
            steps += 1
        return steps * n / elapsed / env_steps_per_agent_step
    finally:
        env.close()


def fixed_batch(cfg: Config, device: torch.device) -> Batch:
    """One real rollout of ``cfg``'s envs under its algorithm's policy at seeded random
    weights, collected on the CPU and put on ``device``: the same batch for every variant of
    an update compared (the perf switches' checks)."""
    from .algos import make_algorithm
    from .envs import env_spec, make_env_groups
    from .runtime.rollout import NetworkPolicy, RolloutCollector, allocate

    cpu, spec, horizon = torch.device("cpu"), env_spec(cfg.env), cfg.algo.rollout_length
    torch.manual_seed(0)
    # eager: compiling the acting network for one rollout would cost more than the rollout
    acting = make_algorithm(spec, replace(cfg, perf=replace(cfg.perf, compile=False, cuda_graphs=False)), cpu).policy()
    groups = make_env_groups(cfg.env, cfg.actors.num_envs, cfg.seed, 1, 1)
    try:
        arrays = RolloutCollector(groups, horizon).collect(NetworkPolicy(acting, cpu, cfg.seed, cfg.actors.num_envs),
                                                           allocate(spec, horizon, cfg.actors.num_envs))
    finally:
        for env in groups:
            env.close()
    return Batch.from_arrays(arrays, device)


def train_run(cfg: Config, seconds: float, algorithm: Callable | None = None):
    """A run of ``cfg`` for ``seconds`` after start-up, writing nothing (its ``RunSummary``);
    ``algorithm`` builds the learner's algorithm from (spec, cfg, device) instead of ``cfg.algo.name``'s."""
    from .runtime.runner import Runner

    quiet = replace(cfg, logging=replace(cfg.logging, console=False))
    # where the network compiles, it does so afresh, as a run in its own process would: runs
    # measured one after another in one process would otherwise share dynamo's cache and, past
    # its recompile limit, run eagerly without a word (inductor's build cache on disk is kept)
    torch._dynamo.reset()
    return Runner(quiet, run_dir=os.devnull, write_logs=False, algorithm=algorithm).run(max_seconds=seconds)


def stopped_unless_done(summary):
    """``summary``, unless a stop signal ended that run: then the whole measurement ends (the
    runner only stops its own run on a signal, and the next phase would start)."""
    if summary.stop_signal is not None:
        raise signals.Interrupted(summary.stop_signal)
    return summary


def train_sps(cfg: Config, seconds: float, algorithm: Callable | None = None) -> float:
    """Agent steps/s of :func:`train_run`."""
    return train_run(cfg, seconds, algorithm).sps


def frozen_algorithm(spec: EnvSpec, cfg: Config, device: torch.device) -> Frozen:
    """``cfg``'s algorithm, acting but not learning (see :class:`Frozen`)."""
    from .algos import make_algorithm

    return Frozen(make_algorithm(spec, cfg, device))


def actor_threads(cfg: Config) -> int:
    """EnvPool threads the run's actors have between them, at most the cores: what raw
    stepping is measured with.

    Each actor (or the inline source) steps ``actors.env_groups`` pools, each with the
    layout's threads per actor; with actor processes the layout keeps a core for the
    learner. Raw stepping with more threads than the actors have would charge that core
    to transport; with more threads than cores it gains nothing."""
    from .runtime.layout import resolve_env_groups, resolve_procs, split_envs, thread_layout

    procs = resolve_procs(cfg)
    per_pool = thread_layout(cfg, procs)[1]
    groups = resolve_env_groups(cfg, procs)
    pools = sum(min(groups, envs) for envs in split_envs(cfg.actors.num_envs, max(procs, 1)))
    return max(1, min(os.cpu_count() or 1, per_pool * pools))


def other_atari_backends(cfg: Config) -> list[str]:
    """The installed Atari backends that could step ``cfg.env.id`` besides the one the run uses."""
    able = [name for name, ids in (("envpool", envpool_ids()), ("ale", ale_games())) if cfg.env.id in ids]
    return [name for name in able if name != choose_backend(cfg.env)] if len(able) > 1 else []


def run_bench(cfg: Config, seconds: float, repeats: int, progress: bool = True, raw_sps: list[float] | None = None) -> dict:
    """Raw stepping, the pipeline and training of ``cfg``, interleaved ``repeats`` times.

    ``raw_sps``: raw stepping's figures (one per repeat) from another layout's bench of the
    same envs on the same number of threads (its ``raw_sps`` and ``raw_env_threads``), used
    instead of measuring them again: building hundreds of ALE envs costs more than measuring."""
    from .runtime.layout import resolve_procs

    procs = resolve_procs(cfg)
    threads = actor_threads(cfg)
    if raw_sps is not None and len(raw_sps) != repeats:
        raise ValueError(f"raw_sps has {len(raw_sps)} figures for {repeats} repeats")
    cfg = replace(cfg, total_steps=10**12)  # the time limit ends each measurement
    backend = choose_backend(cfg.env)
    others = other_atari_backends(cfg)
    figures: dict[str, list[float]] = {"raw": [], **{f"raw_{name}": [] for name in others}, "pipeline": [], "train": []}
    live_efficiency: list[float] = []  # the training run's own perf/env_efficiency
    # each phase's whole wall-clock, start-up included: where a bench's time goes beyond measuring
    phase_wall: dict[str, list[float]] = {k: [] for k in figures}

    @contextmanager
    def clocked(phase: str) -> Iterator[None]:
        began = time.perf_counter()
        yield
        phase_wall[phase].append(round(time.perf_counter() - began, 1))

    for i in range(repeats):
        if raw_sps is not None:
            figures["raw"].append(raw_sps[i])
        else:
            with clocked("raw"):
                figures["raw"].append(raw_env_sps(cfg, seconds, threads))
        for name in others:
            with clocked(f"raw_{name}"):
                figures[f"raw_{name}"].append(raw_env_sps(replace(cfg, env=replace(cfg.env, backend=name)), seconds, threads))
        with clocked("pipeline"):
            figures["pipeline"].append(stopped_unless_done(train_run(transport_config(cfg), seconds)).sps)
        with clocked("train"):
            training = stopped_unless_done(train_run(cfg, seconds))
        figures["train"].append(training.sps)
        live_efficiency.append(training.env_efficiency)
        if progress:
            print(f"repeat {i + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:,.0f} SPS" for k, v in figures.items())
                  + f", live env efficiency {live_efficiency[-1]:.2f}", flush=True)
    medians = {k: statistics.median(v) for k, v in figures.items()}
    end_to_end = medians["train"] / medians["raw"]
    measured = [e for e in live_efficiency if e == e]  # NaN: a training phase of a single update
    live = statistics.median(measured) if measured else float("nan")
    return {
        "env": cfg.env.id,
        "backend": backend,
        "other_backends": others,
        "algo": cfg.algo.name,
        "actors": cfg.actors.num_envs,
        "actor_procs": procs,
        "raw_env_threads": threads,
        "cores": os.cpu_count(),
        "device": cfg.device,
        "seconds": seconds,
        "repeats": repeats,
        **{f"{k}_sps": v for k, v in figures.items()},
        "raw_from_another_layout": raw_sps is not None,
        "phase_wall_s": phase_wall,
        **{f"{k}_sps_median": v for k, v in medians.items()},
        **{f"raw_{name}_ratio": medians[f"raw_{name}"] / medians["raw"] for name in others},
        "transport_efficiency": medians["pipeline"] / medians["raw"],
        "end_to_end_efficiency": end_to_end,
        "live_env_efficiency": live_efficiency,
        "live_env_efficiency_median": live,
        # the live figure comes from the actors' timers alone, the ratio from separate phases:
        # they should agree, and this says whether they do
        "live_agrees_within_0.1": bool(abs(live - end_to_end) <= LIVE_TOLERANCE) if measured else None,
    }


def format_table(r: dict) -> str:
    mode = f"{r['actor_procs']} actor processes" if r["actor_procs"] else "synchronous"
    return "\n".join([
        f"{r['env']}, {r['actors']} actors ({mode}), {r['cores']} cores, "
        f"medians of {r['repeats']} interleaved {r['seconds']:.0f}-s repeats",
        "| measurement | agent steps/s | ratio to raw |",
        "|---|---:|---:|",
        f"| raw {r['backend']} (random actions, {r['raw_env_threads']} threads) | {r['raw_sps_median']:,.0f} | 1.00 |",
        *(f"| raw {name} (the other backend, same threads) | {r[f'raw_{name}_sps_median']:,.0f} | {r[f'raw_{name}_ratio']:.2f} |"
          for name in r["other_backends"]),
        f"| pipeline (random policy, no-op learner) | {r['pipeline_sps_median']:,.0f} | {r['transport_efficiency']:.2f} |",
        f"| training ({r['algo']}) | {r['train_sps_median']:,.0f} | {r['end_to_end_efficiency']:.2f} |",
        "",
        "live env efficiency of the training run (perf/env_efficiency, the actors' own timers): "
        + (f"{r['live_env_efficiency_median']:.2f}, {'within' if r['live_agrees_within_0.1'] else 'NOT within'} "
           f"{LIVE_TOLERANCE} of the training/raw ratio" if r["live_agrees_within_0.1"] is not None
           else "n/a (each training phase made a single update: make --seconds longer)"),
    ])
