#!/usr/bin/env python3
"""IQM of human-normalised final scores with stratified-bootstrap confidence intervals,
read from runs' TensorBoard logs (``charts/episodic_return``).

    python benchmarks/iqm.py runs/sweeps/qrdqn_small_batch
    python benchmarks/iqm.py RUN_OR_FOLDER ... [--reps 2000] [--confidence 0.95] [--json]

Runs are found, read and grouped the way ``parallel-rl report`` does
(``parallel_rl/report.py``): a run's final score is its mean return over its last 10% of
agent steps, and runs of one algorithm whose configs differ only in seed (and logging) are
the seeds of one variant. Each Atari game is a task; a variant's IQM pools the
human-normalised final scores of all its (game, seed) runs, and its interval resamples
seeds within each game (``parallel_rl/stats.py``). Compare variants over the same games:
a warning names any game a variant lacks. Non-Atari runs are left out with a warning.

Exit status 0, or 2 with a message when the paths hold no usable runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from parallel_rl.config import ConfigError
from parallel_rl.report import find_runs, group_runs, load_run
from parallel_rl.stats import atari_game, human_normalized, stratified_bootstrap_ci

EXIT_USAGE = 2


def variant_scores(paths: list[Path]) -> tuple[dict[str, dict[str, list[float]]], list[str]]:
    """{variant label: {game: [human-normalised final score per run]}} and warnings."""
    warnings: list[str] = []
    runs = []
    for path in find_runs(paths):
        run = load_run(path)
        if run is None:
            warnings.append(f"{path}: no finished episode logged yet; left out")
        else:
            runs.append(run)
    scores: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for group in group_runs(runs):
        try:
            game = atari_game(group.env)
        except KeyError:
            warnings.append(f"{group.env} ({len(group.runs)} runs): not an Atari-57 game, no human-normalised score; left out")
            continue
        scores[group.label][game] = [float(human_normalized(run.final_score, group.env)) for run in group.runs]
    all_games = sorted({game for per_game in scores.values() for game in per_game})
    for label, per_game in scores.items():
        missing = [g for g in all_games if g not in per_game]
        if missing:
            warnings.append(f"{label} has no runs of {', '.join(missing)}: its IQM is over other games than the rest")
    return dict(scores), warnings


def summarise(scores: dict[str, dict[str, list[float]]], reps: int, confidence: float) -> list[dict]:
    rows = []
    for label, per_game in sorted(scores.items()):
        point, lower, upper = stratified_bootstrap_ci(per_game, reps=reps, confidence=confidence)
        rows.append({
            "variant": label,
            "games": len(per_game),
            "runs": sum(len(v) for v in per_game.values()),
            "iqm": point,
            "ci": [lower, upper],
            "mean_per_game": {game: sum(v) / len(v) for game, v in sorted(per_game.items())},
        })
    return rows


def format_table(rows: list[dict], confidence: float) -> str:
    games = sorted({g for row in rows for g in row["mean_per_game"]})
    header = ["variant", "games", "runs", "IQM HNS", f"{confidence:.0%} CI", *games]
    lines = [header]
    for row in rows:
        lower, upper = row["ci"]
        lines.append([row["variant"], str(row["games"]), str(row["runs"]), f"{row['iqm']:.3f}", f"[{lower:.3f}, {upper:.3f}]",
                      *(f"{row['mean_per_game'][g]:.3f}" if g in row["mean_per_game"] else "-" for g in games)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out) + "\n(per-game columns: mean human-normalised final score over seeds)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iqm.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run directories or folders holding them (e.g. a sweep's run_root)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap replicates (default 2000)")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence level of the interval (default 0.95)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        if args.reps < 1:
            raise ConfigError(f"--reps {args.reps} is invalid: at least 1 bootstrap replicate.")
        if not 0.0 < args.confidence < 1.0:
            raise ConfigError(f"--confidence {args.confidence} is invalid: a level in (0, 1), e.g. 0.95.")
        scores, warnings = variant_scores(args.paths)
        if not scores:
            raise ConfigError(f"no Atari runs with logged returns under {', '.join(map(str, args.paths))}; "
                              f"human-normalised scores exist for the Atari-57 games only.")
    except ConfigError as exc:
        print(f"iqm.py: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    rows = summarise(scores, args.reps, args.confidence)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows, args.confidence))
    return 0


if __name__ == "__main__":
    sys.exit(main())
