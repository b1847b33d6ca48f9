"""1 rank against N ranks on this machine: agent steps/s and learner updates/s of the same
job (the same total envs, `--actors` counting all ranks) through the real CLI.

    python benchmarks/ranks.py                                   # paac_classic and paac_atari, 1 vs 2 ranks
    python benchmarks/ranks.py --recipes paac_classic --steps 200000 --repeats 1

Each cell is a whole `parallel-rl launch` process (start-up included in its wall-clock,
excluded from its steady SPS, which the run's own `done:` line reports); the cells run in
rounds (1 rank, N ranks, 1 rank, ...), so the drift of a shared machine lands on both alike,
and each is reduced to its median. An update consumes every rank's envs x the rollout
length, so updates/s is the steady SPS over that batch. On a CPU the ranks share the
cores (each sizes its threads to cores / N): the ratio shows what the all-reduce and the
split cost there, not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parallel_rl.config import ConfigError, build_config

DONE = re.compile(r"done: ([\d,]+) agent steps \(([\d,]+) SPS after start-up\)")


class CellFailed(RuntimeError):
    """A launch that exited with an error or printed no result (``CellTimedOut``: ran past its time)."""


class CellTimedOut(CellFailed):
    """A launch stopped for running past its time: the time was short, nothing failed."""


def run_cell(recipe: str, ranks: int, steps: int, run_dir: Path, extra: tuple[str, ...] = (),
             timeout_s: float = 3600.0) -> tuple[float, float]:
    """(steady agent steps/s, wall-clock seconds of the whole process) of one launch.

    The launch runs in a session of its own: past ``timeout_s`` the whole session is ended,
    torchrun's rank processes with it (a hung collective would keep them, and the GPUs)."""
    command = [sys.executable, "-m", "parallel_rl", "launch", "--config", recipe, "--steps", str(steps),
               "--run-dir", str(run_dir), "--set", "logging.interval_s=5", "--set", "checkpoint.interval_steps=0", *extra]
    if ranks > 1:
        command += ["--nproc-per-node", str(ranks)]
    began = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        end_session(proc)
        raise CellTimedOut(f"{recipe} on {ranks} rank(s) ran past {timeout_s:.0f} s and was stopped") from None
    except BaseException:
        end_session(proc)
        raise
    wall = time.perf_counter() - began
    found = DONE.search(stdout)
    if proc.returncode != 0 or found is None:
        raise CellFailed(f"{recipe} on {ranks} rank(s) failed (exit {proc.returncode}):\n{stdout[-2000:]}{stderr[-3000:]}")
    return float(found.group(2).replace(",", "")), wall


def end_session(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM to the launch's whole session (its ranks included), SIGKILL after ``grace_s``."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            return
        try:
            proc.communicate(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["paac_classic", "paac_atari"])
    parser.add_argument("--ranks", type=int, default=2, help="the ranks compared with one (default 2)")
    parser.add_argument("--steps", type=int, default=None,
                        help="agent steps per cell (default: 200k for CartPole recipes, 100k for Atari ones)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.repeats < 1 or args.ranks < 2 or (args.steps is not None and args.steps < 1):
        parser.error(f"--repeats {args.repeats}, --ranks {args.ranks}, --steps {args.steps}: give at least 1 repeat, "
                     "2 ranks and 1 step")
    rows = ["| recipe | envs in all | ranks | agent steps/s | updates/s | wall-clock (s) | N ranks / 1 rank |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for recipe in args.recipes:
        try:
            cfg = build_config(recipe)
        except ConfigError as exc:
            parser.error(f"--recipes {recipe}: {exc}")
        steps = args.steps or (100_000 if "atari" in recipe else 200_000)
        figures: dict[int, list[tuple[float, float]]] = {1: [], args.ranks: []}
        with tempfile.TemporaryDirectory(prefix="parallel-rl-ranks-") as tmp:
            for round_ in range(args.repeats):
                for ranks in figures:
                    try:
                        sps, wall = run_cell(recipe, ranks, steps, Path(tmp) / f"r{ranks}_{round_}")
                    except CellFailed as exc:
                        raise SystemExit(str(exc)) from None
                    figures[ranks].append((sps, wall))
                    print(f"# {recipe}, {ranks} rank(s), round {round_ + 1}: {sps:,.0f} SPS, {wall:.1f} s", flush=True)
        batch = cfg.actors.num_envs * cfg.algo.rollout_length
        single = statistics.median(sps for sps, _ in figures[1])
        for ranks, cells in figures.items():
            sps = statistics.median(s for s, _ in cells)
            wall = statistics.median(w for _, w in cells)
            ratio = "1.00" if ranks == 1 else f"{sps / single:.2f}"
            rows.append(f"| {recipe} | {cfg.actors.num_envs} | {ranks} | {sps:,.0f} | {sps / batch:,.1f} | {wall:.1f} | {ratio} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
