#!/usr/bin/env python3
"""QR-DQN's learner on Atari: gradient steps/s at minibatch 8 vs 32, and the frame
replay's memory per stored transition.

    python benchmarks/qrdqn_learner.py                    # the figures in docs/benchmarks.md
    python benchmarks/qrdqn_learner.py --minibatches 8 32 --seconds 8 --repeats 3 --device cpu

1. Memory: bytes per stored Atari transition (Pong-v5's 4 x 84 x 84 uint8 observations)
   as the replay reports it, for the recipe's 1M transitions, uniform and prioritized,
   computed from the storage layout without allocating 7 GB.
2. Learner: gradient steps/s of configs/qrdqn_atari.yaml's network (Nature CNN, fc 512,
   200 quantiles, Adam) sampling minibatches from a frame replay filled with real Pong
   frames (a random policy's rollouts through the runtime's collector). A gradient step
   samples, rebuilds stacks and n-step returns, runs the online and target networks,
   the quantile-Huber loss and the optimizer step: everything an update does per step.
   Every torch thread of the machine goes to the learner.

Repeats are interleaved (8, 32, 8, 32, ...) and reduced to medians: the speed of a shared
machine drifts by ~10%. Prints a Markdown section.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

from parallel_rl.algos.policies import UniformPolicy
from parallel_rl.algos.qrdqn import QRDQN
from parallel_rl.config import build_config
from parallel_rl.contracts import Batch
from parallel_rl.envs import make_env_groups
from parallel_rl.replay.frames import FrameReplay
from parallel_rl.runtime.layout import resolve_env_groups
from parallel_rl.runtime.rollout import NetworkPolicy, RolloutCollector, allocate
from parallel_rl.runtime.runner import resolve_device

RECIPE = "qrdqn_atari"
REPLAY_STEPS = 8192  # agent steps of real Pong frames in the benchmark's replay


def filled_learner(device: str, num_envs: int = 16, horizon: int = 64) -> QRDQN:
    cfg = build_config(RECIPE, {"device": device, "actors.num_envs": num_envs},
                       [f"replay.capacity={2 * REPLAY_STEPS}", "algo.warmup_steps=0", "logging.diag_interval=0"])
    groups = make_env_groups(cfg.env, num_envs, cfg.seed, os.cpu_count() or 1, resolve_env_groups(cfg, 0))
    collector = RolloutCollector(groups, horizon)
    policy = NetworkPolicy(UniformPolicy(groups[0].spec), torch.device("cpu"), cfg.seed, num_envs)
    algo = QRDQN(groups[0].spec, cfg, resolve_device(device))
    replay = algo.replay
    try:
        arrays = allocate(groups[0].spec, horizon, num_envs)
        for _ in range(REPLAY_STEPS // (num_envs * horizon)):
            batch = Batch.from_arrays(collector.collect(policy, arrays), torch.device("cpu"))
            replay.add(batch.obs, batch.actions, batch.rewards, batch.terminated, batch.truncated, batch.autoreset, batch.next_obs)
    finally:
        collector.close()
    return algo


def steps_per_s(algo: QRDQN, minibatch: int, seconds: float) -> float:
    algo.cfg.replay.minibatch_size = minibatch
    for _ in range(5):  # allocator and kernel warm-up at this minibatch size
        algo.gradient_step()
    sync = torch.cuda.synchronize if algo.device.type == "cuda" else (lambda: None)
    sync()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        algo.gradient_step()
        steps += 1
    sync()
    return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minibatches", type=int, nargs="+", default=[8, 32], help="minibatch sizes to compare (default 8 32)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--device", default="cpu", help="learner device (default cpu)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.repeats < 1 or min(args.minibatches) < 1:
        print("qrdqn_learner.py: error: --seconds must be positive, --repeats and --minibatches at least 1.", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    cfg = build_config(RECIPE)
    shape, dtype = (cfg.env.frame_stack, cfg.env.image_size, cfg.env.image_size), np.uint8
    print(f"## QR-DQN learner ({RECIPE}, Pong-v5 frames)\n\n{cores} cores, torch {torch.__version__}, device {args.device}, "
          f"{cores} torch threads; medians of {args.repeats} interleaved {args.seconds:.0f}-s repeats.\n", flush=True)

    print("| replay of 1M Atari transitions | bytes per transition | total |\n|---|---:|---:|")
    for prioritized in (False, True):
        total = FrameReplay.planned_bytes(shape, dtype, cfg.env.frame_stack, cfg.replay.capacity, cfg.actors.num_envs, prioritized)
        label = "prioritized (sum tree)" if prioritized else "uniform"
        print(f"| {label} | {total / cfg.replay.capacity:,.1f} | {total / 1e9:.2f} GB |")
    algo = filled_learner(args.device)
    print(f"| (whole observations, for comparison) | {2 * np.prod(shape):,} | {2 * np.prod(shape) * cfg.replay.capacity / 1e9:.1f} GB |")
    print(f"\nThe benchmark's own replay reports {algo.replay.bytes_per_transition:,.1f} bytes per transition "
          f"({algo.replay.capacity:,} transitions).\n", flush=True)

    rates: dict[int, list[float]] = {m: [] for m in args.minibatches}
    for _ in range(args.repeats):
        for minibatch in args.minibatches:
            rates[minibatch].append(steps_per_s(algo, minibatch, args.seconds))
    print("| minibatch | gradient steps/s | transitions/s | agent steps/s sustained (utd 0.25) | repeats |\n|---:|---:|---:|---:|---|")
    for minibatch, values in rates.items():
        median = statistics.median(values)
        print(f"| {minibatch} | {median:,.1f} | {median * minibatch:,.0f} | {median / cfg.algo.utd_ratio:,.0f} | "
              f"{', '.join(f'{v:.1f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
