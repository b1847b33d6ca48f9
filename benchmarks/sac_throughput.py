#!/usr/bin/env python3
"""SimbaV2 SAC throughput: the learner's gradient steps/s and the actors' env steps/s.

    python benchmarks/sac_throughput.py                     # the figures in docs/benchmarks.md
    python benchmarks/sac_throughput.py --actors 16 64 --seconds 8 --repeats 3 --device cpu

1. Learner: gradient steps/s of configs/simbav2_mujoco.yaml's networks (critic 2 blocks x
   512 with two members, actor 1 block x 128, minibatch 256) on HalfCheetah-v5's shapes,
   sampling from a replay buffer filled with random transitions. Each step is a critic,
   an actor and a temperature update, the sphere projections and the target update.
2. Actors: agent steps/s collected by the pipeline (the recipe's actor processes and
   rollouts, the learner skipping its gradient steps) with a uniformly random policy and
   with the SimbaV2 actor's inference (untrained weights: the cost is the same), beside
   raw EnvPool stepping of the same number of envs, for each --actors value.

Repeats are interleaved and reduced to medians (the machine's speed drifts by ~10%).
Prints a Markdown section.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from arguments import require_positive  # benchmarks/arguments.py, beside this script

from parallel_rl.algos.sac import SAC
from parallel_rl.bench import (
    actor_threads,
    frozen_algorithm,
    raw_env_sps,
    train_sps,
    transport_config,
)
from parallel_rl.config import build_config
from parallel_rl.envs import env_spec
from parallel_rl.replay import Transitions
from parallel_rl.runtime.layout import resolve_procs
from parallel_rl.runtime.runner import resolve_device

RECIPE = "simbav2_mujoco"


def learner_steps_per_s(device: str, steps: int, threads: int) -> float:
    torch.set_num_threads(threads)
    cfg = build_config(RECIPE, {"device": device})
    spec = env_spec(cfg.env)
    algo = SAC(spec, cfg, resolve_device(device))
    n = 20_000
    obs_dim, act_dim = spec.obs_shape[0], spec.action_space.shape[0]
    algo.replay.add(Transitions(
        obs=torch.randn(n, obs_dim), actions=torch.rand(n, act_dim) * 2 - 1, rewards=torch.randn(n),
        next_obs=torch.randn(n, obs_dim), terminated=torch.rand(n) < 0.001,
    ))
    minibatch = cfg.replay.minibatch_size

    def step() -> None:
        algo.gradient_step(algo.replay.sample(minibatch))

    for _ in range(5):  # allocator and kernel warm-up
        step()
    sync = torch.cuda.synchronize if algo.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=int, nargs="+", default=[16, 64], help="numbers of envs to measure (default 16 64)")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--learner-steps", type=int, default=20, help="gradient steps timed per learner repeat (default 20)")
    parser.add_argument("--device", default="cpu", help="learner device (default cpu)")
    parser.add_argument("--only", choices=["learner", "actors"], help="measure only one of the two parts")
    args = parser.parse_args(argv)
    require_positive(parser, args, "repeats", "seconds", "learner_steps")
    cores = os.cpu_count() or 1
    print(f"# {RECIPE}: {cores} cores, torch {torch.__version__}, device {args.device}; "
          f"medians of {args.repeats} interleaved {args.seconds:.0f}-s repeats\n", flush=True)

    if args.only != "actors":
        report_learner(args, cores)
    if args.only != "learner":
        report_actors(args)
    print("\nCommand: python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    return 0


def report_learner(args: argparse.Namespace, cores: int) -> None:
    updates = [learner_steps_per_s(args.device, args.learner_steps, cores) for _ in range(args.repeats)]
    print("| learner (critic 2 blocks x 512, two members; actor 1 block x 128; minibatch 256) | gradient steps/s |")
    print("|---|---:|")
    print(f"| SimbaV2 SAC on {args.device}, {cores} torch threads, {args.learner_steps} steps per repeat | "
          f"{statistics.median(updates):.3g} (repeats {', '.join(f'{u:.3g}' for u in updates)}) |\n", flush=True)


def report_actors(args: argparse.Namespace) -> None:
    print("| HalfCheetah-v5 envs | actor processes | raw EnvPool | pipeline, random policy | pipeline, SimbaV2 actor inference |")
    print("|---:|---:|---:|---:|---:|")
    for actors in args.actors:
        cfg = build_config(RECIPE, {"actors.num_envs": actors, "device": args.device}, ["logging.console=false"])
        acting = build_config(RECIPE, {"actors.num_envs": actors, "device": args.device},
                              ["logging.console=false", "algo.warmup_steps=0"])  # the network acts from the start
        cfg.total_steps = acting.total_steps = 10**12  # the time limit ends each measurement
        figures: dict[str, list[float]] = {"raw": [], "random": [], "policy": []}
        for _ in range(args.repeats):
            figures["raw"].append(raw_env_sps(cfg, args.seconds, actor_threads(cfg)))
            figures["random"].append(train_sps(transport_config(cfg), args.seconds))
            figures["policy"].append(train_sps(acting, args.seconds, algorithm=frozen_algorithm))
        med = {k: statistics.median(v) for k, v in figures.items()}
        print(f"| {actors} | {resolve_procs(cfg)} | {med['raw']:,.0f} | {med['random']:,.0f} | {med['policy']:,.0f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
