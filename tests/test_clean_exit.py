"""When a command returns, none of its child processes remains, zombie or alive."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def processes_in_group(pgid: int) -> list[str]:
    """'pid state command' of every process whose process group is ``pgid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        head, _, rest = text.rpartition(")")
        fields = rest.split()
        if int(fields[2]) == pgid:
            found.append(f"{head.split(' (')[0]} {fields[0]} {head.split(' (', 1)[1]}")
    return found


def run_in_own_group(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    process = subprocess.Popen([sys.executable, "-m", "parallel_rl", *args], cwd=cwd, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=300)
    left = processes_in_group(process.pid)  # at once: no grace period
    return subprocess.CompletedProcess(args, process.returncode, out, err), left


@pytest.mark.slow  # three full CLI runs with actor processes: 40 s on 2 cores
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_launch_eval_and_bench_leave_no_child_behind(tmp_path):
    run_dir = tmp_path / "run"
    launch = ["launch", "--config", "paac_classic", "--actor-procs", "2", "--steps", "2000", "--run-dir", str(run_dir),
              "--set", "checkpoint.interval_steps=0"]
    result, left = run_in_own_group(launch, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "layout: 2 actor processes" in result.stdout
    assert left == [], f"launch left {left}"

    result, left = run_in_own_group(["eval", str(run_dir), "--episodes", "2"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert left == [], f"eval left {left}"

    bench = ["bench", "--config", "paac_classic", "--actor-procs", "2", "--seconds", "1", "--repeats", "1"]
    result, left = run_in_own_group(bench, tmp_path)
    assert result.returncode == 0, result.stderr
    assert left == [], f"bench left {left}"
