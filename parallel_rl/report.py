"""Learning curves and a table of final scores, read from runs' TensorBoard logs.

Runs are grouped by their config.yaml: the environment, the algorithm, and the variant,
which is every other key whose value differs between runs of that environment and
algorithm (seeds, logging and checkpoint settings aside). The runs of one group are the
seeds of one experiment: their curves are averaged, with a 95% bootstrap confidence band
of the mean, and their final scores reported as mean ± standard deviation.

A run's curve is every finished episode's return (``episodes/return``), smoothed by a
trailing mean over a twentieth of its episodes (between 1 and 100); runs logged before that
tag existed fall back to the per-write means of ``charts/episodic_return``. With
``paper=True`` the table puts each group's final score beside the reference score of
``paper_scores.yaml`` (quoted with its source), and the plots draw it as a dashed line.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import KEPT_CONFIGS, ConfigError, check_writable_folder, flatten, load_yaml
from .metrics import EPISODE_RETURN_TAG

RETURN_TAG = "charts/episodic_return"
PAPER_SCORES = Path(__file__).with_name("paper_scores.yaml")
FINAL_FRACTION = 0.1  # a run's final score: its returns logged over the last 10% of its steps
NOT_A_VARIANT = ("seed", "logging.", "checkpoint.")  # keys that differ between seeds of one experiment
GRID_POINTS = 200
BOOTSTRAP_SAMPLES = 2000


@dataclass
class Run:
    path: Path
    config: dict[str, Any]  # flattened: "algo.gamma" -> 0.99
    steps: np.ndarray  # agent steps at each logged return
    seconds: np.ndarray  # wall-clock seconds since the run's log was opened
    returns: np.ndarray
    per_episode: bool = False  # one point per episode (EPISODE_RETURN_TAG), or per-write means

    @property
    def env(self) -> str:
        return str(self.config.get("env.id", "?"))

    @property
    def algo(self) -> str:
        return str(self.config.get("algo.name", "?"))

    @property
    def final_score(self) -> float:
        return float(self.returns[self.steps >= (1 - FINAL_FRACTION) * self.steps[-1]].mean())

    @property
    def smoothed(self) -> np.ndarray:
        """Per-episode returns as a trailing mean over a twentieth of the episodes (1 to 100)."""
        if not self.per_episode:
            return self.returns
        window = int(np.clip(len(self.returns) // 20, 1, 100))
        sums = np.cumsum(np.concatenate([[0.0], self.returns]))
        ends = np.arange(1, len(self.returns) + 1)
        starts = np.maximum(0, ends - window)
        return (sums[ends] - sums[starts]) / (ends - starts)


@dataclass
class Group:
    env: str
    algo: str
    variant: str  # "key=value, ..." or "" when the runs of this env and algorithm share one config
    runs: list[Run]

    @property
    def label(self) -> str:
        return f"{self.algo} [{self.variant}]" if self.variant else self.algo


@dataclass
class Report:
    table: str
    markdown: Path
    plots: list[Path]
    groups: list[Group]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Reference:
    score: float
    steps: int | None
    source: str


def load_references() -> list[dict[str, Any]]:
    import yaml

    return yaml.safe_load(PAPER_SCORES.read_text())


def reference_for(group: Group, references: list[dict[str, Any]]) -> Reference | None:
    """The most specific reference row for the group's env, algorithm and config, if any."""
    config = group.runs[0].config

    def fits(row: dict[str, Any], env_matches) -> bool:
        return (env_matches(row["env"]) and row["algo"] in ("*", group.algo)
                and all(str(config.get(key)) == str(value) for key, value in (row.get("where") or {}).items()))

    matching = [row for row in references if fits(row, lambda env: env == group.env)]
    source_note = ""
    if not matching:  # another version of the same env (the papers report MuJoCo -v4, the sweeps run -v5)
        matching = [row for row in references if fits(row, lambda env: unversioned(env) == unversioned(group.env))]
        if not matching:
            return None
    row = max(matching, key=lambda r: (r["algo"] != "*", len(r.get("where") or {})))
    if row["env"] != group.env:
        source_note = f" (reported on {row['env']}; this run is on {group.env})"
    return Reference(float(row["score"]), row.get("steps"), str(row["source"]) + source_note)


def unversioned(env_id: str) -> str:
    """``HalfCheetah-v5`` -> ``HalfCheetah``."""
    return re.sub(r"-v\d+$", "", env_id)


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (config.yaml beside tb/) among ``paths`` or anywhere below them."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise ConfigError(f"{str(path)!r} is not a folder: give run directories (runs/<env>__<algo>__s<seed>__<time>) or a folder holding them.")
        below = [path] if (path / "config.yaml").is_file() else sorted(p.parent for p in path.rglob("config.yaml"))
        runs = [p for p in below if (p / "tb").is_dir()]
        if not runs:
            raise ConfigError(f"{str(path)!r} holds no run directory: a run directory has a config.yaml and a tb/ folder.")
        seen = {p.resolve() for p in found}  # one run named two ways (a folder and its parent, a link) is one run
        found += [p for p in runs if p.resolve() not in seen]
    return found


def load_run(path: Path) -> Run | None:
    """The run's config and logged returns; None when it has not finished an episode yet."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    # keep every scalar; skip what a report does not read (videos, text)
    guidance = {ea.SCALARS: 0, ea.IMAGES: 1, ea.TENSORS: 1, ea.HISTOGRAMS: 1, ea.AUDIO: 1, ea.COMPRESSED_HISTOGRAMS: 1}
    accumulator = ea.EventAccumulator(str(path / "tb"), size_guidance=guidance)
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    tag = EPISODE_RETURN_TAG if EPISODE_RETURN_TAG in tags else RETURN_TAG
    if tag not in tags:
        return None
    events = sorted(accumulator.Scalars(tag), key=lambda e: (e.step, e.wall_time))
    start = accumulator.FirstEventTimestamp()
    return Run(
        path=path,
        config=flatten(load_yaml(path / "config.yaml")),
        steps=np.array([e.step for e in events], np.float64),
        seconds=np.array([e.wall_time - start for e in events], np.float64),
        returns=np.array([e.value for e in events], np.float64),
        per_episode=tag == EPISODE_RETURN_TAG,
    )


def group_runs(runs: list[Run]) -> list[Group]:
    by_experiment: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        by_experiment[run.env, run.algo].append(run)
    groups = []
    for (env, algo), members in sorted(by_experiment.items()):
        keys = sorted({k for run in members for k in run.config})
        differing = [
            k for k in keys
            if not k.startswith(NOT_A_VARIANT) and len({repr(run.config.get(k)) for run in members}) > 1
        ]
        variants: dict[str, list[Run]] = defaultdict(list)
        for run in members:
            variants[", ".join(f"{k}={run.config.get(k)}" for k in differing)].append(run)
        groups += [Group(env, algo, variant, variants[variant]) for variant in sorted(variants)]
    return groups


def mean_and_band(curves: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs (rows) and the 95% percentile-bootstrap interval of that mean.

    With one run the band is the curve itself: one seed says nothing about the spread.
    """
    mean = curves.mean(axis=0)
    if len(curves) == 1:
        return mean, mean, mean
    resampled = curves[rng.integers(len(curves), size=(BOOTSTRAP_SAMPLES, len(curves)))].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5], axis=0)
    return mean, low, high


def _x(run: Run, x_axis: str) -> np.ndarray:
    return run.steps if x_axis == "steps" else run.seconds


def curve(group: Group, x_axis: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, low, high) over the x range every run of the group covers, each run's
    returns linearly interpolated onto a common grid."""
    xs = [_x(run, x_axis) for run in group.runs]
    lo, hi = max(x[0] for x in xs), min(x[-1] for x in xs)
    grid = np.linspace(lo, hi, GRID_POINTS) if hi > lo else np.array([hi])
    curves = np.stack([np.interp(grid, x, run.smoothed) for x, run in zip(xs, group.runs, strict=True)])
    return (grid, *mean_and_band(curves, rng))


def _time_unit(seconds: float) -> tuple[str, float]:
    for unit, size in (("hours", 3600.0), ("minutes", 60.0)):
        if seconds >= 2 * size:
            return unit, size
    return "seconds", 1.0


def plot_env(env: str, groups: list[Group], x_axis: str, path: Path, rng: np.random.Generator,
             references: list[dict[str, Any]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(group, *curve(group, x_axis, rng)) for group in groups]
    unit, size = ("", 1.0) if x_axis == "steps" else _time_unit(max(c[1][-1] for c in curves))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    try:
        for group, x, mean, low, high in curves:
            x = x / size
            seeds = len(group.runs)
            (line,) = ax.plot(x, mean, marker="o" if len(x) == 1 else None,
                              label=f"{group.label} ({seeds} seed{'s' if seeds > 1 else ''})")
            if seeds > 1:
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        drawn = set()
        for group in groups if references is not None else ():
            if (ref := reference_for(group, references)) is not None and ref not in drawn:
                drawn.add(ref)
                ax.axhline(ref.score, linestyle="--", color="gray", linewidth=1,
                           label=f"reference {ref.score:g}: {ref.source.split(':')[0].split(',')[0]}")
        ax.set_title(env)
        ax.set_xlabel("agent steps (all environments)" if x_axis == "steps" else f"wall-clock time ({unit})")
        ax.set_ylabel("episodic return (mean, 95% CI)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _fmt_steps(values: list[float]) -> str:
    low, high = int(min(values)), int(max(values))
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def score_table(groups: list[Group], references: list[dict[str, Any]] | None = None) -> str:
    """The final scores; with ``references``, each beside the reference score and its source."""
    header, rule = "| env | algorithm | variant | seeds | agent steps | final return |", "|---|---|---|---:|---:|---:|"
    if references is not None:
        header, rule = header + " reference | reference steps | source |", rule + "---:|---:|---|"
    rows = [
        f"final return: mean ± std over seeds of each run's mean return over its last {FINAL_FRACTION:.0%} of agent steps",
        "",
        header,
        rule,
    ]
    for group in groups:
        scores = [run.final_score for run in group.runs]
        mean = sum(scores) / len(scores)
        score = f"{mean:.2f}"
        if len(scores) > 1:
            score += f" ± {math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)):.2f}"
        steps = _fmt_steps([run.steps[-1] for run in group.runs])
        row = f"| {group.env} | {group.algo} | {group.variant or '-'} | {len(scores)} | {steps} | {score} |"
        if references is not None:
            ref = reference_for(group, references)
            row += (f" {ref.score:g} | {f'{ref.steps:,}' if ref.steps else '-'} | {ref.source} |" if ref is not None
                    else " - | - | no reference for this env and algorithm |")
        rows.append(row)
    return "\n".join(rows)


def _file_name(env: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in env) + ".png"


UNEVEN_LENGTH = 0.9  # a run ending before this fraction of its group's longest is named


def pooling_warnings(group: Group) -> list[str]:
    """What makes a group's runs less than independent seeds of one budget: a seed that
    appears twice (a relaunch), or a run that stopped well short of the others (its final
    score is taken at another point of learning)."""
    out = []
    seeds = [run.config.get("seed") for run in group.runs]
    repeated = sorted({str(seed) for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        out.append(f"{group.env} / {group.label}: seed {', '.join(repeated)} appears in more than one run, and each "
                   "run counts as a seed in the band and the final score.")
    longest = max(run.steps[-1] for run in group.runs)
    short = [run for run in group.runs if run.steps[-1] < UNEVEN_LENGTH * longest]
    if short:
        out.append(f"{group.env} / {group.label}: " + ", ".join(f"{run.path} ends at {run.steps[-1]:,.0f} steps" for run in short)
                   + f", against {longest:,.0f} for the longest: its final score is taken earlier in learning.")
    return out


def make_report(paths: list[Path], out_dir: Path, x_axis: str = "steps", seed: int = 0, paper: bool = False) -> Report:
    """Reads the runs under ``paths``; writes one PNG per env and report.md into ``out_dir``
    (with ``paper``, the reference scores beside the final ones)."""
    if x_axis not in ("steps", "time"):
        raise ConfigError(f"--x {x_axis!r} is not a valid choice: steps or time.")
    runs, warnings = [], []
    for path in find_runs(paths):
        run = load_run(path)
        if run is None:
            warnings.append(f"{path} left out: it has logged no finished episode ({RETURN_TAG}) yet.")
        else:
            runs.append(run)
            if kept := sorted(path.glob(KEPT_CONFIGS)):
                warnings.append(f"{path} changed settings when resumed ({', '.join(p.name for p in kept)} hold the earlier "
                                "ones): its curve mixes them, and it is grouped by its config.yaml, the latest.")
    if not runs:
        raise ConfigError(f"None of the {len(warnings)} runs found has logged a finished episode ({RETURN_TAG}); "
                          "nothing to report. Train longer or with a smaller logging.interval_s.")
    groups = group_runs(runs)
    warnings += [warning for group in groups for warning in pooling_warnings(group)]
    references = load_references() if paper else None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {str(out_dir)!r} cannot be created: {exc.strerror or exc}. Give a folder that can be written.") from None
    check_writable_folder(out_dir, f"--out {str(out_dir)!r}")
    rng = np.random.default_rng(seed)
    plots = []
    by_env: dict[str, list[Group]] = defaultdict(list)
    for group in groups:
        by_env[group.env].append(group)
    for env, env_groups in by_env.items():
        plots.append(out_dir / _file_name(env))
        plot_env(env, env_groups, x_axis, plots[-1], rng, references)
    table = score_table(groups, references)
    listing = [f"- {group.env} / {group.label}: " + ", ".join(str(run.path) for run in group.runs) for group in groups]
    markdown = out_dir / "report.md"
    markdown.write_text("\n\n".join([
        "# parallel-rl report",
        table,
        "\n".join(f"![{env}]({plot.name})" for env, plot in zip(by_env, plots, strict=True)),
        "## Runs\n\n" + "\n".join(listing),
    ]) + "\n")
    return Report(table, markdown, plots, groups, warnings)
