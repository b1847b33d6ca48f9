"""Learning by agent step under the off-policy publish cadence: SimbaV2 on Pendulum-v1.

How often a replay-based learner hands new weights to acting decides how stale the policy
that collects the replay is. This script trains `configs/simbav2_pendulum.yaml` for 30k
agent steps on each seed, one fresh process at a time, and prints the mean return of the
episodes that ended in the 2,400 agent steps (12 episodes of 4 envs) before 10k, 20k and
30k steps, per seed and over seeds, as the markdown table in docs/benchmarks.md:

    python benchmarks/offpolicy_cadence.py --seeds 1 2 3 4 5
    python benchmarks/offpolicy_cadence.py --seeds 1 2 3 4 5 --set algo.publish_interval=32

Extra ``--set`` overrides go to every run (the same seeds before and after a change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MILESTONES = (10_000, 20_000, 30_000)
WINDOW = 2_400  # agent steps: 3 episodes of 200 steps in each of the recipe's 4 envs


def episode_returns(run_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing import event_accumulator as ea

    accumulator = ea.EventAccumulator(str(run_dir / "tb"), size_guidance={ea.SCALARS: 0})
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars("charts/episodic_return")]


def window_mean(points: list[tuple[int, float]], end: int) -> float:
    inside = [value for step, value in points if end - WINDOW < step <= end]
    return statistics.fmean(inside) if inside else float("nan")


def train(seed: int, overrides: list[str], root: Path) -> dict[int, float]:
    run_dir = root / f"seed{seed}"
    command = [sys.executable, "-m", "parallel_rl", "launch", "--config", "simbav2_pendulum", "--seed", str(seed),
               "--steps", str(MILESTONES[-1]), "--run-dir", str(run_dir), "--set", "logging.interval_s=0",
               "--set", "logging.console=false"]
    for assignment in overrides:
        command += ["--set", assignment]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    points = episode_returns(run_dir)
    return {milestone: window_mean(points, milestone) for milestone in MILESTONES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, help="also write the per-seed figures here")
    args = parser.parse_args()
    rows: dict[int, dict[int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cadence-") as tmp:
        for seed in args.seeds:
            rows[seed] = train(seed, args.overrides, Path(tmp))
            print(f"seed {seed}: " + ", ".join(f"{m // 1000}k {rows[seed][m]:.1f}" for m in MILESTONES), flush=True)
    header = "| seed | " + " | ".join(f"{m // 1000}k steps" for m in MILESTONES) + " |"
    print(f"\noverrides: {' '.join(args.overrides) or '(recipe defaults)'}\n")
    print(header)
    print("|---:|" + "---:|" * len(MILESTONES))
    for seed, row in rows.items():
        print(f"| {seed} | " + " | ".join(f"{row[m]:.1f}" for m in MILESTONES) + " |")
    means = {m: statistics.fmean(row[m] for row in rows.values()) for m in MILESTONES}
    print("| mean | " + " | ".join(f"{means[m]:.1f}" for m in MILESTONES) + " |")
    if args.json:
        args.json.write_text(json.dumps({"overrides": args.overrides, "rows": rows, "means": means}, indent=2))


if __name__ == "__main__":
    main()
