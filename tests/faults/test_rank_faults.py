"""A rank that dies ends a data-parallel run with a named error, not a hang."""

import os
import signal
import time
from pathlib import Path

import pytest

from .helpers import Launch, children_of


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """Rank -> pid of the ranks torchrun's agent (in the CLI ``launcher_pid``) started."""
    ranks = {}
    for child in children_of(launcher_pid):
        try:
            environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{child}/environ").read_bytes().split(b"\0") if b"=" in item)
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"RANK" in environ and b"parallel_rl" in cmdline:
            ranks[int(environ[b"RANK"])] = child
    return ranks


def two_training_ranks(tmp_path) -> tuple[Launch, dict[int, int]]:
    """A 2-rank PAAC CartPole job through the CLI, once both ranks train; with their pids."""
    run = Launch(tmp_path / "run", "--config", "paac_classic", "--nproc-per-node", "2", "--steps", "100000000",
                 "--set", "logging.interval_s=0.5")
    deadline = time.monotonic() + 120
    while not run.proc.stdout.readline().startswith("step "):
        assert run.proc.poll() is None and time.monotonic() < deadline, "the ranks never started training"
    ranks = rank_pids(run.proc.pid)
    assert sorted(ranks) == [0, 1], ranks
    return run, ranks


@pytest.mark.slow  # two ranks start and train
def test_kill_9_of_one_rank_stops_the_other_with_a_named_error(tmp_path):
    run, ranks = two_training_ranks(tmp_path)
    killed = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    code, err, _ = run.wait(timeout=60)
    assert time.monotonic() - killed < 30, "the other rank did not stop within 30 s"
    assert code != 0
    assert "rank 0 of 2" in err and "another rank died or stopped" in err, err[-3000:]
    assert "[rank0]: Traceback" not in err  # rank 0 explains itself in one paragraph
    run.assert_nothing_left(list(ranks.values()))


@pytest.mark.slow  # two ranks start and train
def test_ctrl_c_stops_every_rank_after_the_same_update_with_a_final_checkpoint(tmp_path):
    """Ctrl-C in a terminal reaches the whole process group: the launcher, torchrun and both
    ranks. The ranks agree to stop after the same update, rank 0 writes the final checkpoint,
    and the job exits 130 with nothing left behind."""
    from parallel_rl import checkpoint as ckpt

    run, ranks = two_training_ranks(tmp_path)
    run.signal(signal.SIGINT, group=True)
    code, err, _ = run.wait(timeout=60)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    saved = ckpt.load(ckpt.latest(run.run_dir / "checkpoints"))
    assert saved["step"] > 0 and saved["step"] % (32 * 5) == 0  # whole updates of both ranks' 16 envs x 5 steps
    assert run.out.count("stopped by SIGINT; final checkpoint") == 1, run.out[-2000:]  # said once, by rank 0
    run.assert_nothing_left(list(ranks.values()))


@pytest.mark.slow  # two ranks start and train
@pytest.mark.parametrize("rank", [0, 1])
def test_sigterm_to_one_rank_stops_the_job_as_a_preemption_not_a_failure(tmp_path, rank):
    """A scheduler pre-empting one node signals its ranks alone: the others hear nothing. All
    stop after the same update, rank 0 writes the final checkpoint and says which signal
    stopped the run, and the job exits 143 as a one-rank run does, not as a failure."""
    from parallel_rl import checkpoint as ckpt

    run, ranks = two_training_ranks(tmp_path)
    os.kill(ranks[rank], signal.SIGTERM)
    code, err, _ = run.wait(timeout=60)
    assert code == 143, err[-3000:]
    assert "the job failed" not in err and "Traceback" not in err, err[-3000:]
    assert run.out.count("stopped by SIGTERM; final checkpoint") == 1, run.out[-2000:]
    assert ckpt.load(ckpt.latest(run.run_dir / "checkpoints"))["step"] > 0
    run.assert_nothing_left(list(ranks.values()))
