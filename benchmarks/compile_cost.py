"""A perf switch off vs on (`perf.compile` unless `--switch` names another): training agent
steps/s of a recipe, interleaved rounds, medians.

    python benchmarks/compile_cost.py --recipes ppo_classic ppo_atari --seconds 10 --rounds 3
    python benchmarks/compile_cost.py --switch channels_last --recipes paac_atari --set perf.compile=true

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

from arguments import refuse_bad_configs, require_positive  # beside this script

from parallel_rl.bench import train_run
from parallel_rl.config import build_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["ppo_classic", "ppo_atari"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--switch", choices=("compile", "channels_last"), default="compile",
                        help="the perf.* switch turned off and on (default: compile)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="any other setting, the same for both (repeatable)")
    args = parser.parse_args()
    require_positive(parser, args, "rounds", "seconds")
    switched_too = [o for o in args.overrides if o.split("=", 1)[0].strip() == f"perf.{args.switch}"]
    if switched_too:
        parser.error(f"--set {switched_too[0]}: perf.{args.switch} is the switch this script turns off and on; "
                     "a --set of it would make both runs the same")
    refuse_bad_configs(parser, args.recipes, overrides=args.overrides)
    off, on = ("eager", "compiled") if args.switch == "compile" else ("off", "on")
    print(f"perf.{args.switch}{''.join(' --set ' + o for o in args.overrides)}\n")
    print(f"| recipe | {off} | {on} | {on} / {off} | seconds outside the window, {off} / {on} |")
    print("|---|---:|---:|---:|---:|")
    for recipe in args.recipes:
        figures: dict[bool, list[float]] = {False: [], True: []}
        startup: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for switched in (False, True):
                cfg = build_config(recipe, {"total_steps": 10**12, f"perf.{args.switch}": switched},
                                   ["logging.console=false", *args.overrides])
                began = time.perf_counter()
                summary = train_run(cfg, args.seconds)
                startup[switched].append(time.perf_counter() - began - summary.seconds)
                figures[switched].append(summary.sps)
        runs = {k: " / ".join(f"{x:,.0f}" for x in v) for k, v in figures.items()}
        ratio = statistics.median(figures[True]) / statistics.median(figures[False])
        print(f"| {recipe} | {runs[False]} | {runs[True]} | {ratio:.2f} | "
              f"{statistics.median(startup[False]):.0f} / {statistics.median(startup[True]):.0f} |", flush=True)


if __name__ == "__main__":
    main()
