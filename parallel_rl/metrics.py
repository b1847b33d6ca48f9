"""TensorBoard scalars, the run's config (text, HParams, Custom Scalars layout), and one
refreshing console line."""

from __future__ import annotations

import collections
import math
import sys
import time

import torch
from torch.utils.tensorboard import SummaryWriter

from .config import Config, dump_yaml, flatten
from .contracts import GRAD_NORM_STEP_MAX


def _fmt_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# The final recent return, written at the end of a run: the metric of the HParams tab
HPARAMS_METRIC = "hparams/recent_return"
# every finished episode's return, at the step of the update that reported it: the fine
# curve `report` smooths (charts/episodic_return is the mean per write, a few points a run)
EPISODE_RETURN_TAG = "episodes/return"

# how close acting runs to the env library's own speed, from the actors' own timers: the
# wall-clock the steps taken need at the speed of a bare step, over the wall-clock they took
# (runtime.rollout)
ENV_EFFICIENCY_TAG = "perf/env_efficiency"

# The Custom Scalars tab: returns, throughput and diagnostics; each chart overlays the tags
# its Python regexes match from the start of the tag name
DIAGNOSTIC_CHARTS = {
    "gradient norm (global and per layer)": ["diag/grad_norm"],
    "value mean": ["diag/value_mean"],
    "policy lag (updates)": [r"diag/policy_lag.*"],
    "pipeline": ["diag/queue_fill", "diag/actor_restarts", "diag/nonfinite_updates"],
    "dormant units": [r"diag/dormant_fraction.*"],
    "feature norm": ["diag/feature_norm"],
    "effective learning rate": ["diag/effective_lr"],
    "replay": [r"diag/replay_.*", "diag/gradient_steps"],
}
_CHARTED = "|".join(pattern for patterns in DIAGNOSTIC_CHARTS.values() for pattern in patterns)
CUSTOM_SCALARS_LAYOUT = {
    "returns": {
        "episodic return": ["Multiline", ["charts/episodic_return"]],
        "every episode's return": ["Multiline", ["episodes/return"]],
        "episode length": ["Multiline", ["charts/episodic_length"]],
        "learning rate": ["Multiline", ["charts/learning_rate"]],
        "epsilon": ["Multiline", ["charts/epsilon"]],
    },
    "throughput": {
        "agent steps per second": ["Multiline", ["charts/sps"]],
        "env efficiency (1.0: as fast as the env library)": ["Multiline", [ENV_EFFICIENCY_TAG]],
        "time per stage, summed over the updates between writes (ms)": ["Multiline", [r"perf/.*_ms"]],
    },
    "diagnostics": {
        "losses": ["Multiline", [r"losses/.*"]],
        **{title: ["Multiline", patterns] for title, patterns in DIAGNOSTIC_CHARTS.items()},
        "other diagnostics": ["Multiline", [rf"(?!{_CHARTED})diag/.*"]],  # tags added later still show
    },
}


class EnvEfficiency:
    """The seconds the steps taken need at the env library's own speed over the wall-clock
    they took, summed over deliveries (and over the actor processes within one)."""

    def __init__(self) -> None:
        self.busy_s = self.wall_s = 0.0

    def add(self, delivery) -> None:
        self.busy_s += delivery.env_busy_s
        self.wall_s += delivery.env_wall_s

    @property
    def fraction(self) -> float:
        return min(1.0, self.busy_s / self.wall_s) if self.wall_s > 0 else float("nan")


# the largest global gradient norm since the last write: the newest value alone, written every
# few seconds, samples one update in hundreds and misses a spike that starts a collapse
GRAD_NORM_MAX_TAG = "diag/grad_norm_max"


class UpdateStats:
    """What the learner loop's records add up to between two writes: the newest value of
    each update tag, the largest gradient norm, time per stage, env efficiency, policy lag
    and skipped updates."""

    def __init__(self) -> None:
        self.latest: dict[str, float | object] = {}
        self.lr = 0.0
        self.nonfinite_updates = 0
        self._stage_seconds: dict[str, float] = {}
        self._env = EnvEfficiency()
        self._lag_sum = self._lag_count = self._lag_max = 0  # over the deliveries since the last write
        self._grad_norm_max: torch.Tensor | None = None

    def add(self, record) -> None:
        """One ``runtime.learner.UpdateRecord``."""
        if record.result.skipped:
            self.nonfinite_updates += 1
        else:
            metrics = dict(record.result.metrics)
            # the largest of the update's steps where it took several, else its one step's
            grad_norm = metrics.pop(GRAD_NORM_STEP_MAX, metrics.get("diag/grad_norm"))
            self.latest.update(metrics)  # tags an update skips keep their last value
            if grad_norm is not None:  # kept on the update's device: no host sync per update
                grad_norm = torch.as_tensor(grad_norm)
                self._grad_norm_max = grad_norm if self._grad_norm_max is None else torch.maximum(self._grad_norm_max, grad_norm)
        self.lr = record.lr
        for stage, seconds in record.delivery.timings.items():
            self._stage_seconds[stage] = self._stage_seconds.get(stage, 0.0) + seconds
        self._stage_seconds["update"] = self._stage_seconds.get("update", 0.0) + record.seconds
        self._env.add(record.delivery)
        lags = record.delivery.lag
        if lags:
            self._lag_sum += sum(lags)
            self._lag_count += len(lags)
            self._lag_max = max(self._lag_max, *lags)

    def scalars(self) -> dict[str, float]:
        """The tags to write now; time per stage and lag start over."""
        out = {tag: float(value) for tag, value in self.latest.items()}
        out["charts/learning_rate"] = self.lr
        if self._grad_norm_max is not None:
            out[GRAD_NORM_MAX_TAG] = float(self._grad_norm_max)
        out.update({f"perf/{stage}_ms": 1e3 * seconds for stage, seconds in self._stage_seconds.items()})
        if self._env.wall_s > 0:
            out[ENV_EFFICIENCY_TAG] = self._env.fraction
        if self._lag_count:
            out["diag/policy_lag"] = self._lag_sum / self._lag_count
            out["diag/policy_lag_max"] = self._lag_max
        out["diag/nonfinite_updates"] = self.nonfinite_updates
        self._stage_seconds, self._env, self._grad_norm_max = {}, EnvEfficiency(), None
        self._lag_sum = self._lag_count = self._lag_max = 0
        return out


class Metrics:
    """Collects episode statistics and scalars; writes them every ``interval_s`` seconds.

    With ``tb_dir=None`` nothing is written (benchmarks), but SPS and returns are still tracked.
    """

    def __init__(self, tb_dir, total_steps: int, interval_s: float, return_window: int, console: bool, start_step: int = 0):
        # a resumed run drops the events its killed predecessor wrote after the checkpoint (TensorBoard's
        # purge, which the report's reader honours too): otherwise those steps would be read twice
        self.writer = SummaryWriter(str(tb_dir), purge_step=start_step + 1 if start_step else None) if tb_dir is not None else None
        self.total_steps = total_steps
        self.interval_s = interval_s
        self.console = console
        self.recent_returns: collections.deque[float] = collections.deque(maxlen=return_window)
        self.episodes = 0
        self._pending_returns: list[float] = []
        self._pending_lengths: list[int] = []
        self._pending_episodes: list[tuple[int, float]] = []
        self._last_time = time.perf_counter()
        self._last_step = start_step
        self._tty = sys.stdout.isatty()
        self.sps = 0.0

    def log_run_start(self, cfg: Config, step: int) -> None:
        """The resolved config as text, its scalar values in the HParams tab, and the
        Custom Scalars layout; once per launch or resume."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        self.writer.add_text("config", f"```yaml\n{dump_yaml(cfg)}```", step)
        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flatten(cfg.to_dict()).items()}
        # written into this run's own events file (add_hparams would start a separate run
        # folder), so the HParams tab reads the metric from this run's scalars
        for summary in hparams(values, dict.fromkeys([HPARAMS_METRIC])):
            self.writer.file_writer.add_summary(summary, step)
        self.writer.add_custom_scalars(CUSTOM_SCALARS_LAYOUT)

    def add_episodes(self, returns: list[float], lengths: list[int], step: int) -> None:
        if returns:
            if self.writer is not None:  # kept for the writer alone: a rank that logs nothing would keep them all
                self._pending_episodes += [(step, r) for r in returns]
                self._pending_returns += returns
                self._pending_lengths += lengths
            self.recent_returns.extend(returns)
            self.episodes += len(returns)

    @property
    def recent_mean_return(self) -> float:
        return sum(self.recent_returns) / len(self.recent_returns) if self.recent_returns else float("nan")

    def restart_clock(self, step: int) -> None:
        """Steps per second from here on (the first update): start-up is not steady state."""
        self._last_time, self._last_step = time.perf_counter(), step

    def persist_episodes(self) -> None:
        """Every finished episode's return on disk now (a checkpoint is about to be saved: a
        crash after it must not lose episodes before it); the averages wait for the next write."""
        if self.writer is None:
            return
        for episode_step, value in self._pending_episodes:
            self.writer.add_scalar(EPISODE_RETURN_TAG, value, episode_step)
        self._pending_episodes = []
        self.writer.flush()

    def due(self) -> bool:
        return time.perf_counter() - self._last_time >= self.interval_s

    def write(self, step: int, scalars: dict[str, float]) -> None:
        now = time.perf_counter()
        elapsed = now - self._last_time
        if elapsed > 0 and step > self._last_step:
            self.sps = (step - self._last_step) / elapsed
        self._last_time, self._last_step = now, step
        if self.writer is None:
            return
        if self._pending_returns:
            n = len(self._pending_returns)
            self.writer.add_scalar("charts/episodic_return", sum(self._pending_returns) / n, step)
            self.writer.add_scalar("charts/episodic_length", sum(self._pending_lengths) / n, step)
            for episode_step, value in self._pending_episodes:
                self.writer.add_scalar(EPISODE_RETURN_TAG, value, episode_step)
            self._pending_returns, self._pending_lengths, self._pending_episodes = [], [], []
        self.writer.add_scalar("charts/sps", self.sps, step)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        if self.console:
            self.print_progress(step, scalars.get(ENV_EFFICIENCY_TAG))

    def print_progress(self, step: int, env_efficiency: float | None = None) -> None:
        eta = max(0, self.total_steps - step) / self.sps if self.sps > 0 else float("inf")  # the last rollout overshoots
        recent = self.recent_mean_return
        ret = f"{recent:8.2f} ({len(self.recent_returns)} ep)" if self.recent_returns else "     n/a"
        env = f" (env {env_efficiency:.2f})" if env_efficiency is not None else ""
        line = (
            f"step {_fmt_count(step):>7}/{_fmt_count(self.total_steps)} ({100 * step / self.total_steps:5.1f}%) | "
            f"{self.sps:8,.0f} SPS{env} | return {ret} | ETA {_fmt_duration(eta)}"
        )
        if self._tty:
            print("\r" + line, end="", flush=True)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.console and self._tty:
            print()
        if self.writer is not None:
            if self.recent_returns:
                self.writer.add_scalar(HPARAMS_METRIC, self.recent_mean_return, self._last_step)
            self.writer.close()
