"""Training speed of one or two checkouts side by side, each measurement a fresh process.

For each round, recipe and checkout in turn: ``bench``'s training phase (``train_sps``, the
run's own layout, compilation and warm-up excluded) for ``--seconds``, in a process that
imports that checkout's package. The checkouts alternate within a round (reversed every other round), so drift of a
shared machine lands on both; the table gives each cell's median over the rounds.

    git worktree add /tmp/before COMMIT
    python benchmarks/training_ab.py /tmp/before . --rounds 3 \\
        --case paac_atari --case paac_atari:actors.procs=1 --case ppo_atari --case paac_classic

A case is a recipe, with ``:KEY=VALUE`` overrides after it (comma-separated).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transport_ab import add_checkouts_argument, in_checkout, refuse_bad_checkouts, turn_order  # noqa: E402

from parallel_rl.config import recipe_names  # noqa: E402

MEASURE = """
import json, sys
from dataclasses import replace
from parallel_rl.bench import train_sps
from parallel_rl.config import build_config
recipe, seconds, *sets = sys.argv[1:]
cfg = replace(build_config(recipe, {"logging.console": False}, sets), total_steps=10**12)
print(json.dumps({"sps": train_sps(cfg, float(seconds))}))
"""

RECIPES = recipe_names()


def parse_case(text: str) -> tuple[str, list[str]]:
    recipe, _, sets = text.partition(":")
    return recipe, [s for s in sets.split(",") if s]


def measure(checkout: str, recipe: str, sets: list[str], seconds: float) -> float:
    done = subprocess.run([sys.executable, "-c", MEASURE, recipe, str(seconds), *sets], capture_output=True, text=True,
                          **in_checkout(checkout))
    if done.returncode:
        sys.exit(f"training {recipe} {sets} with {checkout} failed (exit code {done.returncode}):\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])["sps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkouts_argument(parser)
    parser.add_argument("--case", action="append", default=[], metavar="RECIPE[:KEY=VALUE,...]",
                        help="a recipe to train, with overrides (default: paac_atari)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    refuse_bad_checkouts(parser, args.checkouts)
    cases = [parse_case(text) for text in args.case or ["paac_atari"]]
    for recipe, _ in cases:
        if recipe not in RECIPES:
            parser.error(f"--case recipe {recipe!r} is not a recipe; valid choices: {', '.join(RECIPES)}")
    if args.rounds < 1 or args.seconds <= 0:
        parser.error(f"--rounds ({args.rounds}) must be 1 or more and --seconds ({args.seconds}) above 0")
    figures: dict[tuple[int, str], list[float]] = {}
    for round_ in range(args.rounds):
        for i, (recipe, sets) in enumerate(cases):
            for checkout in turn_order(args.checkouts, round_):
                figures.setdefault((i, checkout), []).append(measure(checkout, recipe, sets, args.seconds))
            print(f"round {round_ + 1}, {args.case[i] if args.case else recipe}: "
                  + ", ".join(f"{c} {figures[i, c][-1]:,.0f}" for c in args.checkouts), flush=True)
    header = " | ".join(f"{c} (agent steps/s, median of {args.rounds})" for c in args.checkouts)
    print(f"\n| case | {header} |" + (" ratio |" if len(args.checkouts) == 2 else ""))
    print("|---|" + "---:|" * (len(args.checkouts) + (len(args.checkouts) == 2)))
    for i, (recipe, sets) in enumerate(cases):
        values = [figures[i, c] for c in args.checkouts]
        cells = " | ".join(f"{statistics.median(v):,.0f} ({' / '.join(f'{x:,.0f}' for x in v)})" for v in values)
        ratio = f" {statistics.median(values[1]) / statistics.median(values[0]):.2f}x |" if len(values) == 2 else ""
        print(f"| {recipe}{' ' + ' '.join(sets) if sets else ''} | {cells} |{ratio}")


if __name__ == "__main__":
    main()
