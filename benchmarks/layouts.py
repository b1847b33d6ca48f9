"""The layout grid: training agent steps/s of each recipe for K actor processes x torch threads
x env groups, against what the default layout (`actors.procs: -1`, threads and groups left to
the runner) picks.

    python benchmarks/layouts.py                                  # paac_atari, ppo_atari, paac_classic
    python benchmarks/layouts.py --recipes paac_classic --seconds 4 --repeats 1

Every cell is a full training run of ``--seconds`` after start-up (`bench`'s training
figure); the cells of all recipes are measured in rounds (every cell once per round), so
drift of a shared machine lands on all of them alike, and each is reduced to its median.
Prints the markdown table for docs/benchmarks.md: the default's ratio to the best cell is
the figure that matters (the target: within 5%).
"""

from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import replace

from arguments import refuse_bad_configs, require_positive  # beside this script

from parallel_rl.bench import train_sps
from parallel_rl.config import Config, build_config
from parallel_rl.runtime.layout import resolve_env_groups, resolve_procs, thread_layout

DEFAULT = "default"


def grid(cores: int) -> list[tuple[int, int, int]]:
    """(K, torch threads, env groups): K in {0, 1, 2}, the learner on 1 .. cores threads; one
    and two env groups inline, two with actor processes (whose acting has a core to overlap)."""
    threads = sorted({1, max(1, cores // 2), cores})
    return [(procs, n, groups) for procs in (0, 1, 2) for n in threads for groups in ((1, 2) if procs == 0 else (2,))]


def cell_config(recipe: str, procs: int | None, threads: int | None, groups: int | None) -> Config:
    cfg = build_config(recipe, {"total_steps": 10**12})
    if procs is None:  # the default layout, as a user gets it
        return cfg
    return replace(cfg, torch_threads=threads, actors=replace(cfg.actors, procs=procs, env_groups=groups))


def describe(cfg: Config) -> str:
    procs = resolve_procs(cfg)
    learner, env_threads = thread_layout(cfg, procs)
    groups = resolve_env_groups(cfg, procs)
    return (f"K = {procs}, {learner} torch threads, {env_threads} env threads{' per actor process' if procs else ''}, "
            f"{groups} env group{'s' if groups > 1 else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["paac_atari", "ppo_atari", "paac_classic"])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    require_positive(parser, args, "repeats", "seconds")
    refuse_bad_configs(parser, args.recipes)
    cores = os.cpu_count() or 1
    cells = {(recipe, key): cell_config(recipe, *key) if key != DEFAULT else cell_config(recipe, None, None, None)
             for recipe in args.recipes for key in [DEFAULT, *grid(cores)]}
    figures: dict[tuple, list[float]] = {cell: [] for cell in cells}
    for round_ in range(args.repeats):
        for cell, cfg in cells.items():
            quiet = replace(cfg, logging=replace(cfg.logging, console=False))
            figures[cell].append(train_sps(quiet, args.seconds))
        print(f"round {round_ + 1}/{args.repeats} done", flush=True)
    print(f"\n{cores} cores; medians of {args.repeats} rounds of {args.seconds:g}-s training runs\n")
    print("| recipe | layout | agent steps/s | ratio to the best |")
    print("|---|---|---:|---:|")
    for recipe in args.recipes:
        medians = {key: statistics.median(figures[(r, key)]) for (r, key) in cells if r == recipe}
        best = max(medians.values())
        for key, value in medians.items():
            label = f"**default** ({describe(cells[(recipe, key)])})" if key == DEFAULT else describe(cells[(recipe, key)])
            print(f"| {recipe} | {label} | {value:,.0f} | {value / best:.2f} |")


if __name__ == "__main__":
    main()
