"""`perf.compile` off vs on: training agent steps/s of a recipe, interleaved rounds, medians.

    python benchmarks/compile_cost.py --recipes ppo_classic ppo_atari --seconds 10 --rounds 3

Each speed counts from the first update (`bench`'s training figure), so compilation during
start-up is not charged there; recompilation later is. The last column is what start-up
costs, the seconds outside the measured window (building the run, its first update,
closing it), medians: the compiled figure minus the eager one is what compiling adds, which
`perf.compile: auto` weighs against a run's length.
"""

from __future__ import annotations

import argparse
import statistics
import time

from parallel_rl.bench import train_run
from parallel_rl.config import build_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["ppo_classic", "ppo_atari"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| recipe | eager | compiled | compiled / eager | seconds outside the window, eager / compiled |")
    print("|---|---:|---:|---:|---:|")
    for recipe in args.recipes:
        figures: dict[bool, list[float]] = {False: [], True: []}
        startup: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for compiled in (False, True):
                cfg = build_config(recipe, {"total_steps": 10**12, "perf.compile": compiled}, ["logging.console=false"])
                began = time.perf_counter()
                summary = train_run(cfg, args.seconds)
                startup[compiled].append(time.perf_counter() - began - summary.seconds)
                figures[compiled].append(summary.sps)
        runs = {k: " / ".join(f"{x:,.0f}" for x in v) for k, v in figures.items()}
        ratio = statistics.median(figures[True]) / statistics.median(figures[False])
        print(f"| {recipe} | {runs[False]} | {runs[True]} | {ratio:.2f} | "
              f"{statistics.median(startup[False]):.0f} / {statistics.median(startup[True]):.0f} |", flush=True)


if __name__ == "__main__":
    main()
