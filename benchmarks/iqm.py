#!/usr/bin/env python3
"""IQM of normalised final scores with stratified-bootstrap confidence intervals, read
from runs' TensorBoard logs (``charts/episodic_return``).

    python benchmarks/iqm.py runs/sweeps/qrdqn_small_batch
    python benchmarks/iqm.py runs/reproduce/qrdqn_batch_size_classic
    python benchmarks/iqm.py RUN_OR_FOLDER ... [--reps 2000] [--confidence 0.95] [--json]

Runs are found, read and grouped the way ``parallel-rl report`` does
(``parallel_rl/report.py``): a run's final score is its mean return over its last 10% of
agent steps, and runs of one algorithm whose configs differ only in seed (and logging) are
the seeds of one variant. Each env is a task. A variant's IQM pools the normalised final
scores of all its (task, seed) runs: human-normalised on the Atari-57 games, 0 at random
play and 1 at Gymnasium's "solved" threshold on CartPole-v1 and Acrobot-v1
(``parallel_rl/stats.py``); its interval resamples seeds within each task. Every task also
gets the IQM of its raw final scores, with its own interval; a task without reference
scores (Pendulum-v1, MuJoCo) gets that alone, and is left out of the normalised IQM with a
warning. Compare variants over the same tasks: a warning names any task a variant lacks.

Exit status 0, or 2 with a message when the paths hold no usable runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from parallel_rl.config import ConfigError
from parallel_rl.report import find_runs, group_runs, load_run, pooling_warnings
from parallel_rl.stats import normalized_score, stratified_bootstrap_ci

EXIT_USAGE = 2


def variant_scores(paths: list[Path]) -> tuple[dict[str, dict[str, list[tuple[float, float | None]]]], list[str]]:
    """{variant label: {task: [(raw, normalised or None) final score per run]}} and warnings."""
    warnings: list[str] = []
    runs = []
    for path in find_runs(paths):
        run = load_run(path)
        if run is None:
            warnings.append(f"{path}: no finished episode logged yet; left out")
        else:
            runs.append(run)
    scores: dict[str, dict[str, list[tuple[float, float | None]]]] = defaultdict(dict)
    for group in group_runs(runs):
        try:
            per_run = [(float(run.final_score), *normalized_score(run.final_score, group.env)) for run in group.runs]
        except KeyError as exc:
            warnings.append(f"{group.env} ({len(group.runs)} runs): {exc.args[0]}; only its raw-score IQM is given")
            per_run = [(float(run.final_score), group.env, None) for run in group.runs]
        # keyed by the env id: two ids of one game (Pong-v5, Pong-v4) are two tasks, neither lost
        scores[group.label][group.env] = [(raw, normalised) for raw, _, normalised in per_run]
        warnings += pooling_warnings(group)
    all_tasks = sorted({task for per_task in scores.values() for task in per_task})
    for label, per_task in scores.items():
        missing = [t for t in all_tasks if t not in per_task]
        if missing:
            warnings.append(f"{label} has no runs of {', '.join(missing)}: its IQM is over other tasks than the rest")
    return dict(scores), warnings


def summarise(scores: dict[str, dict[str, list[tuple[float, float | None]]]], reps: int, confidence: float) -> list[dict]:
    rows = []
    for label, per_task in sorted(scores.items()):
        normalised = {task: [n for _, n in runs] for task, runs in per_task.items() if runs[0][1] is not None}
        point, lower, upper = (stratified_bootstrap_ci(normalised, reps=reps, confidence=confidence) if normalised
                               else (None, None, None))
        raw_iqm = {}
        for task, runs in sorted(per_task.items()):
            task_point, task_lower, task_upper = stratified_bootstrap_ci({task: [r for r, _ in runs]}, reps=reps,
                                                                         confidence=confidence)
            raw_iqm[task] = {"runs": len(runs), "iqm": task_point, "ci": [task_lower, task_upper]}
        rows.append({
            "variant": label,
            "games": len(normalised),
            "runs": sum(len(v) for v in normalised.values()),
            "iqm": point,
            "ci": [lower, upper],
            "mean_per_game": {task: sum(v) / len(v) for task, v in sorted(normalised.items())},
            "raw_iqm_per_task": raw_iqm,
        })
    return rows


def aligned(lines: list[list[str]], left: int) -> list[str]:
    """Rows of cells as text columns, the first ``left`` columns left-aligned, a rule under the header."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
           for line in lines]
    return [out[0], "  ".join("-" * w for w in widths), *out[1:]]


def format_table(rows: list[dict], confidence: float) -> str:
    games = sorted({g for row in rows for g in row["mean_per_game"]})
    lines = [["variant", "tasks", "runs", "IQM normalised", f"{confidence:.0%} CI", *games]]
    for row in rows:
        if row["iqm"] is None:
            continue
        lower, upper = row["ci"]
        lines.append([row["variant"], str(row["games"]), str(row["runs"]), f"{row['iqm']:.3f}", f"[{lower:.3f}, {upper:.3f}]",
                      *(f"{row['mean_per_game'][g]:.3f}" if g in row["mean_per_game"] else "-" for g in games)])
    out = [*aligned(lines, 1), "(per-task columns: mean normalised final score over seeds)", ""] if len(lines) > 1 else []
    raw = [["variant", "task", "runs", "IQM final score", f"{confidence:.0%} CI"]]
    for row in rows:
        for task, stats in row["raw_iqm_per_task"].items():
            lower, upper = stats["ci"]
            raw.append([row["variant"], task, str(stats["runs"]), f"{stats['iqm']:.1f}", f"[{lower:.1f}, {upper:.1f}]"])
    return "\n".join([*out, *aligned(raw, 2)])


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
            raise ConfigError(f"no runs with logged returns under {', '.join(map(str, args.paths))}: give run "
                              f"directories or folders holding them (a run directory has config.yaml and tb/).")
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
