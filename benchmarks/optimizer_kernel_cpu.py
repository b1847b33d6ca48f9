#!/usr/bin/env python3
"""The optimizer's kernels on a CPU learner, `perf.optimizer_kernel` = `default` (torch's loop
over the parameters), `foreach` (its multi-tensor kernel: one call per operation for all
of them) and `fused` (Adam only: one pass over all of them).

    python benchmarks/optimizer_kernel_cpu.py
    python benchmarks/optimizer_kernel_cpu.py --recipes qrdqn_small_batch --seconds 20 --rounds 3

Every cell is a full training run of ``--seconds`` after start-up (`bench`'s training figure),
eager (``perf.compile=false``) so that a short run measures the learner rather than
compiling; the kernels take turns in every round, each round starting one later, so
drift of a shared machine lands on all. The replay-based recipes learn from their 1,024th
agent step on (their own warm-ups are 1k to 20k steps of random acting) in a replay of 100k
transitions, so the figure is the learner's. Prints the Markdown table for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from amp_cpu import RUN_OVERRIDES  # noqa: E402
from transport_ab import turn_order  # noqa: E402

from parallel_rl.bench import train_sps  # noqa: E402
from parallel_rl.config import Config, build_config  # noqa: E402

# the recipes whose optimizer is torch's Adam or RMSprop, each with what makes a short run
# measure its learner (the Atari QR-DQN's as amp_cpu.py times it)
RECIPES = {
    "qrdqn_atari": RUN_OVERRIDES["qrdqn_atari"],
    "qrdqn_small_batch": RUN_OVERRIDES["qrdqn_atari"],
    "qrdqn_classic": ("algo.warmup_steps=1024",),
    "simbav2_pendulum": ("algo.warmup_steps=1024",),
    "ppo_atari": (),
    "ppo_classic": (),
    "paac_classic": (),
    "paac_atari": (),
}
KERNELS = ("default", "foreach", "fused")


def kernels(recipe: str) -> tuple[str, ...]:
    """The kernels ``recipe``'s optimizer has: torch fuses Adam alone."""
    return KERNELS if build_config(recipe).optim.name == "adam" else KERNELS[:2]


def cell_config(recipe: str, kernel: str) -> Config:
    cfg = build_config(recipe, {"total_steps": 10**12, "perf.optimizer_kernel": kernel, "perf.compile": False},
                       RECIPES[recipe])
    return replace(cfg, logging=replace(cfg.logging, console=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--seconds", type=float, default=15.0, help="each training run, after start-up")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each kernel per recipe")
    args = parser.parse_args()
    if args.seconds <= 0 or args.rounds < 1:
        parser.error(f"--seconds {args.seconds} and --rounds {args.rounds}: the seconds must be positive and the rounds at least 1")
    figures: dict[tuple[str, str], list[float]] = {(r, k): [] for r in args.recipes for k in kernels(r)}
    for recipe in args.recipes:
        for round_ in range(args.rounds):
            for kernel in turn_order(kernels(recipe), round_):
                figures[(recipe, kernel)].append(train_sps(cell_config(recipe, kernel), args.seconds))
        print(f"{recipe} done", flush=True)
    print(f"\n{os.cpu_count()} cores, torch {torch.__version__}; medians of {args.rounds} alternated "
          f"{args.seconds:g}-s training runs, eager\n")
    print("| recipe | optimizer | default: agent steps/s (runs) | foreach (runs) | fused (runs) | foreach / default | fused / default |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for recipe in args.recipes:
        medians = {k: statistics.median(figures[(recipe, k)]) for k in kernels(recipe)}
        shown = {k: f"{medians[k]:,.0f} ({' / '.join(f'{x:,.0f}' for x in figures[(recipe, k)])})" for k in medians}
        ratios = {k: f"{medians[k] / medians['default']:.2f}" for k in medians}
        print(f"| {recipe} | {build_config(recipe).optim.name} | {shown['default']} | {shown['foreach']} | {shown.get('fused', '-')} | "
              f"{ratios['foreach']} | {ratios.get('fused', '-')} |")


if __name__ == "__main__":
    main()
