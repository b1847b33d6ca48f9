"""Throughput: raw EnvPool stepping vs full training, same envs and threads, one run.

Raw EnvPool throughput on a shared machine drifts by about 10% between runs, so the two
measurements are interleaved (raw, train, raw, train, ...) and each reduced to its median;
the ratio of medians is the figure to quote.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import replace

import numpy as np

from .config import Config
from .envs import default_num_threads, make_env


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
        steps, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            raw.step(actions[steps % 64])
            steps += 1
        return steps * n / elapsed
    finally:
        env.close()


def train_sps(cfg: Config, seconds: float) -> float:
    from .runtime.runner import Runner

    summary = Runner(cfg, run_dir=os.devnull, write_logs=False).run(max_seconds=seconds)
    return summary.sps


def run_bench(cfg: Config, seconds: float, repeats: int, progress: bool = True) -> dict:
    threads = cfg.actors.num_threads or default_num_threads(cfg.actors.num_envs)
    cfg = replace(cfg, total_steps=10**12)  # the time limit ends each training measurement
    raw, train = [], []
    for i in range(repeats):
        raw.append(raw_env_sps(cfg, seconds, threads))
        train.append(train_sps(cfg, seconds))
        if progress:
            print(f"repeat {i + 1}/{repeats}: raw {raw[-1]:,.0f} SPS, training {train[-1]:,.0f} SPS", flush=True)
    raw_median, train_median = statistics.median(raw), statistics.median(train)
    return {
        "env": cfg.env.id,
        "algo": cfg.algo.name,
        "actors": cfg.actors.num_envs,
        "env_threads": threads,
        "cores": os.cpu_count(),
        "device": cfg.device,
        "seconds": seconds,
        "repeats": repeats,
        "raw_sps": raw,
        "train_sps": train,
        "raw_sps_median": raw_median,
        "train_sps_median": train_median,
        "end_to_end_efficiency": train_median / raw_median,
    }


def format_table(r: dict) -> str:
    return "\n".join([
        f"{r['env']}, {r['actors']} actors, {r['env_threads']} env threads, {r['cores']} cores, "
        f"medians of {r['repeats']} interleaved {r['seconds']:.0f}-s repeats",
        "| measurement | agent steps/s | ratio to raw |",
        "|---|---:|---:|",
        f"| raw EnvPool (random actions) | {r['raw_sps_median']:,.0f} | 1.00 |",
        f"| training ({r['algo']}, synchronous) | {r['train_sps_median']:,.0f} | {r['end_to_end_efficiency']:.2f} |",
    ])
