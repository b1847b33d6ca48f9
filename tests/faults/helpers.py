"""Launch the real CLI in a subprocess and inspect what it leaves behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def actor_pids(pid: int) -> list[int]:
    """Actor processes of the runner ``pid`` (spawned children, not the resource tracker)."""
    pids = []
    for child in children_of(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            pids.append(child)
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def dev_shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


class Launch:
    """``parallel-rl launch`` in its own process group, with stdout read line by line."""

    def __init__(self, run_dir: Path, *args: str, resume: bool = False):
        self.run_dir = run_dir
        self.out = ""
        self.shm_before = dev_shm()
        where = ["--resume", str(run_dir)] if resume else ["--run-dir", str(run_dir)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parallel_rl.cli", "launch", *where, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )

    def wait_for_actors(self, count: int, timeout: float = 90.0) -> list[int]:
        """Wait until ``count`` actors exist and training has produced a progress line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("step "):
                pids = actor_pids(self.proc.pid)
                if len(pids) >= count:
                    return pids
            if self.proc.poll() is not None:
                raise AssertionError(f"launch exited early: {self.proc.stderr.read()}")
        raise AssertionError("actors never started")

    def wait_for_checkpoint(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not list((self.run_dir / "checkpoints").glob("step_*.pt")):
            if time.monotonic() > deadline:
                raise AssertionError("no checkpoint was written")
            time.sleep(0.1)

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> tuple[int, str, float]:
        began = time.monotonic()
        try:
            self.out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()
            raise AssertionError(f"launch did not exit within {timeout} s (hang)") from None
        return self.proc.returncode, err, time.monotonic() - began

    def assert_nothing_left(self, pids: list[int]) -> None:
        deadline = time.monotonic() + 10
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if alive(p)], "actor processes left behind"
        assert not (self.run_dir / "ipc").exists() or not any((self.run_dir / "ipc").iterdir()), "socket file left behind"
        assert dev_shm() - self.shm_before == set(), "shared-memory segment left behind"


ASYNC_CARTPOLE = ("--config", "paac_classic", "--steps", "100000000", "--set", "actors.procs=2",
                  "--set", "algo.name=impala", "--set", "logging.interval_s=0.5",
                  "--set", "checkpoint.interval_steps=20000")
