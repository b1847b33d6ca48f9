"""Launch the real CLI in a subprocess and inspect what it leaves behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat after the command name: state, ppid, pgrp, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = _stat_fields(entry.name)
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``: a launched CLI and every process
    it ever started, wherever they were reparented."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = _stat_fields(entry.name)
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
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
        state = _stat_fields(pid)[0]
    except OSError:
        return False
    return state != "Z"


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler installed for ``signum`` (SigCgt in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask >> (signum - 1) & 1)


def dev_shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


class Launch:
    """``parallel-rl launch`` in its own process group, with stdout read line by line.

    It gets a private TMPDIR, so whatever it (or torch, or multiprocessing) puts in a
    temporary folder, sockets included, is seen by ``assert_nothing_left``.
    """

    def __init__(self, run_dir: Path, *args: str, resume: bool = False):
        self.run_dir = run_dir
        self.out = ""
        self.shm_before = dev_shm()
        self.tmp = run_dir.parent / f"{run_dir.name}.tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        where = ["--resume", str(run_dir)] if resume else ["--run-dir", str(run_dir)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parallel_rl.cli", "launch", *where, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, "TMPDIR": str(self.tmp)},
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

    def wait_for_signal_handlers(self, timeout: float = 60.0) -> None:
        """Wait until the CLI handles SIGTERM itself: its first act in ``main``. (Python
        handles SIGINT from start-up, SIGTERM only once parallel-rl installs a handler.)"""
        deadline = time.monotonic() + timeout
        while not catches(self.proc.pid, signal.SIGTERM):
            if self.proc.poll() is not None:
                raise AssertionError(f"launch exited early: {self.proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError("the CLI never installed its signal handlers")
            time.sleep(0.01)

    def wait_for_checkpoint(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not list((self.run_dir / "checkpoints").glob("step_*.pt")):
            if time.monotonic() > deadline:
                raise AssertionError("no checkpoint was written")
            time.sleep(0.1)

    def signal(self, signum: int, group: bool = False) -> None:
        (os.killpg if group else os.kill)(self.proc.pid, signum)

    def wait(self, timeout: float) -> tuple[int, str, float]:
        """(exit code, stderr, seconds until the CLI exited and every process that held its
        output pipes, its children included, had closed them)."""
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
        while (any(alive(p) for p in pids) or group_members(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if alive(p)], "actor processes left behind"
        assert not group_members(self.proc.pid), f"processes of the run left behind: {group_members(self.proc.pid)}"
        assert not (self.run_dir / "ipc").exists() or not any((self.run_dir / "ipc").iterdir()), "socket file left behind"
        assert dev_shm() - self.shm_before == set(), "shared-memory segment left behind"
        # torch creates its compilation cache folder there on first use, to be kept across runs
        left = [p for p in self.tmp.iterdir() if not p.name.startswith("torchinductor_")]
        assert not left, f"temporary files left behind: {left}"


ASYNC_CARTPOLE = ("--config", "paac_classic", "--steps", "100000000", "--set", "actors.procs=2",
                  "--set", "algo.name=impala", "--set", "logging.interval_s=0.5",
                  "--set", "checkpoint.interval_steps=20000")
