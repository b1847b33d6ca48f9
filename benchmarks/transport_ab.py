"""Transport of two checkouts side by side, each measurement in a fresh process, as a run is.

    python benchmarks/transport_ab.py OLD_CHECKOUT NEW_CHECKOUT --rounds 4
    python benchmarks/transport_ab.py A B --set actors.num_threads=2 --seconds 15

Each round runs, each in a process of its own: raw stepping of the envs (``bench``'s raw
figure, the actors' threads), then for each checkout the pipeline (``bench``'s transport
probe: a uniformly random policy and a learner that learns nothing) for ``--seconds``.
The checkouts take turns within a round, so drift of a shared machine lands on both.

Why not ``bench`` itself: its phases share one process, so what one phase leaves behind
(the allocator's state after hundreds of envs were built and freed) changes what the next
costs. A run has no such phases before it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

MEASURE = """
import json, sys
from dataclasses import replace
from parallel_rl.bench import actor_threads, raw_env_sps, train_sps, transport_config
from parallel_rl.config import build_config
phase, seconds, env, actors, procs, *sets = sys.argv[1:]
cfg = build_config("paac_atari", {"env.id": env, "actors.num_envs": int(actors), "actors.procs": int(procs)}, sets)
cfg = replace(cfg, total_steps=10**12)
sps = raw_env_sps(cfg, float(seconds), actor_threads(cfg)) if phase == "raw" else train_sps(transport_config(cfg), float(seconds))
print(json.dumps({"sps": sps}))
"""


def measure(checkout: str, phase: str, args: argparse.Namespace) -> float:
    environ = {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}
    command = [sys.executable, "-c", MEASURE, phase, str(args.seconds), args.env, str(args.actors), str(args.actor_procs), *args.set]
    done = subprocess.run(command, env=environ, capture_output=True, text=True, cwd=os.path.abspath(checkout))
    if done.returncode:
        sys.exit(f"measuring {phase} with {checkout} failed (exit code {done.returncode}):\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])["sps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs=2, help="two source trees (each holding parallel_rl/)")
    parser.add_argument("--env", default="Pong-v5")
    parser.add_argument("--actors", type=int, default=256)
    parser.add_argument("--actor-procs", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    for checkout in args.checkouts:
        if not os.path.isfile(os.path.join(checkout, "parallel_rl", "__init__.py")):
            parser.error(f"checkout {checkout!r} holds no parallel_rl package: give two source trees of this "
                         "project, e.g. `git worktree add /tmp/before COMMIT` and `.`")
    raw: list[float] = []
    pipeline: dict[str, list[float]] = {c: [] for c in args.checkouts}
    for r in range(args.rounds):
        raw.append(measure(args.checkouts[0], "raw", args))
        for checkout in args.checkouts:
            pipeline[checkout].append(measure(checkout, "pipeline", args))
        print(f"round {r + 1}: raw {raw[-1]:,.0f}, " + ", ".join(f"{c} {v[-1]:,.0f}" for c, v in pipeline.items()), flush=True)
    base = statistics.median(raw)
    print(f"\n| measurement | agent steps/s (median of {args.rounds}) | ratio to raw |\n|---|---:|---:|")
    print(f"| raw stepping | {base:,.0f} | 1.00 |")
    for checkout, values in pipeline.items():
        print(f"| pipeline, {checkout} ({' / '.join(f'{v:,.0f}' for v in values)}) | {statistics.median(values):,.0f} | "
              f"{statistics.median(values) / base:.2f} |")


if __name__ == "__main__":
    main()
