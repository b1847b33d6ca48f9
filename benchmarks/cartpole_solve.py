#!/usr/bin/env python3
"""Time to solve CartPole-v1 with `paac_classic`, the whole process, seed by seed.

    python benchmarks/cartpole_solve.py                      # seeds 1-5, the recipe as it is
    python benchmarks/cartpole_solve.py --seeds 1 2 --set total_steps=150000
    python benchmarks/cartpole_solve.py --against total_steps=300000 --against actors.num_envs=16

Each seed is one `parallel-rl launch --config paac_classic --seed S` process, timed from its
start to its exit (interpreter and torch import, env creation, training, the final
checkpoint), run one at a time so that the runs do not share the cores. Solved means the
greedy policy of its final checkpoint averages at least 475 over 20 evaluation episodes
(Gymnasium's reward threshold); the evaluation runs after the timed process, untimed.
With ``--against``, a second variant (the recipe with those overrides) is timed side by
side: for each seed the two variants run one after the other, alternating which goes first,
and the ratio of their median times is printed. Prints markdown tables for
docs/benchmarks.md, or JSON with --json.

Exit status 0 when every seed of the recipe (``--set``) solved, 1 when any did not, 2 for a
bad command line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transport_ab import turn_order  # noqa: E402  (beside this script)

SOLVED = 475.0
EVAL_EPISODES = 20
EXIT_USAGE = 2


def solve_once(seed: int, overrides: list[str]) -> dict:
    """One timed launch of paac_classic, then its greedy evaluation."""
    from parallel_rl.checkpoint import find
    from parallel_rl.evaluate import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = [sys.executable, "-m", "parallel_rl", "launch", "--config", "paac_classic", "--seed", str(seed),
                   "--run-dir", str(run_dir), "--set", "logging.console=false"]
        for override in overrides:
            command += ["--set", override]
        began = time.perf_counter()
        launched = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        seconds = time.perf_counter() - began
        if launched.returncode != 0:
            raise RuntimeError(f"seed {seed}: `{' '.join(command)}` exited {launched.returncode}:\n{launched.stderr[-3000:]}")
        returns = evaluate(find(run_dir), EVAL_EPISODES, greedy=True).returns
    greedy = sum(returns) / len(returns)
    return {"seed": seed, "seconds": seconds, "greedy_return": greedy, "solved": greedy >= SOLVED}


def table(name: str, overrides: list[str], rows: list[dict]) -> str:
    lines = [f"{name}: paac_classic on CartPole-v1, overrides: {' '.join(overrides) or 'none'}", "",
             "| seed | whole process (s) | greedy return (20 episodes) | solved |", "|---:|---:|---:|---|"]
    lines += [f"| {r['seed']} | {r['seconds']:.1f} | {r['greedy_return']:.1f} | {'yes' if r['solved'] else '**no**'} |" for r in rows]
    lines += ["", f"{sum(r['solved'] for r in rows)} of {len(rows)} seeds solved; median {median(r['seconds'] for r in rows):.1f} s, "
                  f"slowest {max(r['seconds'] for r in rows):.1f} s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cartpole_solve.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every seed (to try a retuned recipe)")
    parser.add_argument("--against", action="append", default=None, metavar="KEY=VALUE",
                        help="override of a second variant, timed side by side with the first (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args(argv)
    variants = {"recipe": args.overrides, **({"against": args.overrides + args.against} if args.against else {})}
    rows: dict[str, list[dict]] = {name: [] for name in variants}
    try:
        for index, seed in enumerate(args.seeds):
            for name in turn_order(list(variants), index):
                rows[name].append(solve_once(seed, variants[name]))
    except RuntimeError as exc:
        print(f"cartpole_solve.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(rows if args.against else rows["recipe"], indent=2))
    else:
        print("\n\n".join(table(name, variants[name], rows[name]) for name in variants))
        if args.against:
            ratio = median(r["seconds"] for r in rows["against"]) / median(r["seconds"] for r in rows["recipe"])
            print(f"\nmedian time, against / recipe: {ratio:.2f}")
    return 0 if all(row["solved"] for row in rows["recipe"]) else 1


if __name__ == "__main__":
    sys.exit(main())
