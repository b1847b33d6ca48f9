"""Soak test: run asynchronous CartPole for a while and watch every process's memory.

Starts `parallel-rl launch` (IMPALA, 2 actor processes by default) in a temporary run
directory, samples the resident set size (RSS, from /proc) of the runner and of each
actor process every --interval-s seconds (a minute by default), prints a table, then the
growth from the first sample at least a minute in (start-up over) to the last, and
stops the run with SIGINT. Not part of the test suite: it takes --minutes.

    python benchmarks/soak.py --minutes 20
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_GROWTH = 0.05
START_UP_S = 60.0  # growth is measured from the first sample past this, once start-up is over


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB, None once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def actor_pids(runner: int) -> list[int]:
    """The runner's actor processes (spawned children; not multiprocessing's resource tracker)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == runner and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="how long to run (default 20)")
    parser.add_argument("--interval-s", type=float, default=60.0, help="seconds between samples (default 60)")
    parser.add_argument("--actor-procs", type=int, default=2, help="actor processes (default 2)")
    parser.add_argument("--env", default="CartPole-v1", help="environment (default CartPole-v1)")
    parser.add_argument("--algo", default="impala", help="algorithm (default impala)")
    args = parser.parse_args()
    if args.minutes <= 0 or args.interval_s <= 0:
        parser.error("--minutes and --interval-s must be positive")

    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        run_dir = Path(folder) / "run"
        command = [sys.executable, "-m", "parallel_rl.cli", "launch", "--config", "paac_classic", "--env", args.env,
                   "--run-dir", str(run_dir), "--steps", str(10**12), "--actor-procs", str(args.actor_procs),
                   "--set", f"algo.name={args.algo}", "--set", "logging.console=false",
                   "--set", "checkpoint.interval_steps=1000000"]
        print(" ".join(command), flush=True)
        # its messages go to a file: a pipe nobody reads while it runs would stall it once full
        errors = (Path(folder) / "stderr.txt").open("w+")
        runner = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, text=True, start_new_session=True)
        began = time.monotonic()
        samples: list[tuple[float, dict[str, int]]] = []
        try:
            while (elapsed := time.monotonic() - began) < args.minutes * 60:
                time.sleep(min(args.interval_s, max(0.0, args.minutes * 60 - elapsed)))
                if runner.poll() is not None:
                    errors.seek(0)
                    raise SystemExit(f"the run ended early (exit code {runner.returncode}):\n{errors.read()[-5000:]}")
                sizes = {"runner": rss_kib(runner.pid)}
                sizes.update({f"actor {k}": rss_kib(pid) for k, pid in enumerate(actor_pids(runner.pid))})
                samples.append((time.monotonic() - began, {name: kib for name, kib in sizes.items() if kib is not None}))
                print_row(samples[-1], header=len(samples) == 1)
        finally:
            if runner.poll() is None:
                os.kill(runner.pid, signal.SIGINT)
                try:
                    runner.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(runner.pid, signal.SIGKILL)
                    runner.wait()
            errors.close()
        checkpoints = sorted((run_dir / "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem[5:]))
        steps = int(checkpoints[-1].stem[5:]) if checkpoints else 0
    return 0 if print_growth(samples, steps, runner.returncode) else 1


def print_row(sample: tuple[float, dict[str, int]], header: bool) -> None:
    seconds, sizes = sample
    names = list(sizes)
    if header:
        print(f"{'minute':>6} " + " ".join(f"{name + ' MiB':>14}" for name in names) + f" {'total MiB':>10}")
    print(f"{seconds / 60:6.1f} " + " ".join(f"{sizes[n] / 1024:14.1f}" for n in names) + f" {sum(sizes.values()) / 1024:10.1f}",
          flush=True)


def print_growth(samples: list[tuple[float, dict[str, int]]], steps: int, exit_code: int) -> bool:
    """The growth from the first sample past start-up to the last; False where fewer than two
    samples came after start-up (nothing to compare)."""
    samples = [sample for sample in samples if sample[0] >= START_UP_S]
    if len(samples) < 2:
        print(f"fewer than two samples after the first {START_UP_S:.0f} s of start-up: nothing to compare "
              "(run longer, or sample more often)")
        return False
    (t0, first), (t1, last) = samples[0], samples[-1]
    print(f"\ngrowth from minute {t0 / 60:.1f} to minute {t1 / 60:.1f} ({steps:,} agent steps; run stopped with exit code {exit_code}):")
    both = [name for name in first if name in last]  # a process started or ended between them is left out of the total too
    for name in both:
        print(f"  {name:8s} {first[name] / 1024:8.1f} -> {last[name] / 1024:8.1f} MiB  {100 * (last[name] / first[name] - 1):+6.2f}%")
    total0, total1 = sum(first[name] for name in both), sum(last[name] for name in both)
    growth = total1 / total0 - 1
    verdict = "within" if growth < GOAL_GROWTH else "ABOVE"
    print(f"  {'total':8s} {total0 / 1024:8.1f} -> {total1 / 1024:8.1f} MiB  {100 * growth:+6.2f}%  ({verdict} the {100 * GOAL_GROWTH:.0f}% goal)")
    return True


if __name__ == "__main__":
    sys.exit(main())
