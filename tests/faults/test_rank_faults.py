"""A rank that dies ends a data-parallel run with a named error, not a hang."""

import os
import signal
import time
from pathlib import Path

import pytest

from .helpers import Launch, children_of


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """Rank -> pid of the ranks torchrun started for the CLI ``launcher_pid`` (its grandchildren)."""
    ranks = {}
    for agent in children_of(launcher_pid):
        for child in children_of(agent):
            environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{child}/environ").read_bytes().split(b"\0") if b"=" in item)
            if b"RANK" in environ and b"parallel_rl" in Path(f"/proc/{child}/cmdline").read_bytes():
                ranks[int(environ[b"RANK"])] = child
    return ranks


@pytest.mark.slow  # two ranks start and train
def test_kill_9_of_one_rank_stops_the_other_with_a_named_error(tmp_path):
    run = Launch(tmp_path / "run", "--config", "paac_classic", "--nproc-per-node", "2", "--steps", "100000000",
                 "--set", "logging.interval_s=0.5")
    deadline = time.monotonic() + 120
    while not run.proc.stdout.readline().startswith("step "):  # both ranks are training
        assert run.proc.poll() is None and time.monotonic() < deadline, "the ranks never started training"
    ranks = rank_pids(run.proc.pid)
    assert sorted(ranks) == [0, 1], ranks
    killed = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    code, err, _ = run.wait(timeout=60)
    assert time.monotonic() - killed < 30, "the other rank did not stop within 30 s"
    assert code != 0
    assert "rank 0 of 2" in err and "another rank died or stopped" in err, err[-3000:]
    assert "[rank0]: Traceback" not in err  # rank 0 explains itself in one paragraph
    run.assert_nothing_left(list(ranks.values()))
