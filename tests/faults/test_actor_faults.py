"""Faults injected into a real asynchronous run: each must end cleanly, named, with nothing left."""

import os
import signal
import time

import pytest

from parallel_rl import checkpoint as ckpt

from .helpers import ASYNC_CARTPOLE, Launch, alive

# processes killed, stopped and signalled at random moments: minutes in all, so not in the fast tier
pytestmark = pytest.mark.slow



def test_kill_9_actor_is_named_and_run_stops(tmp_path):
    run = Launch(tmp_path / "run", *ASYNC_CARTPOLE)
    pids = run.wait_for_actors(2)
    killed_at = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    code, err, _ = run.wait(timeout=30)
    reported_after = time.monotonic() - killed_at
    assert code == 1, err
    assert "actor process 1" in err and "SIGKILL" in err and "Traceback" not in err
    assert reported_after < 10, reported_after  # detection polls exit codes every 50 ms
    ckpt.load(ckpt.latest(tmp_path / "run" / "checkpoints"))  # the final checkpoint is loadable
    run.assert_nothing_left(pids)


def test_sigstop_actor_is_reported_as_stalled(tmp_path):
    run = Launch(tmp_path / "run", *ASYNC_CARTPOLE, "--set", "actors.heartbeat_timeout_s=2")
    pids = run.wait_for_actors(2)
    os.kill(pids[0], signal.SIGSTOP)
    code, err, _ = run.wait(timeout=30)
    assert code == 1, err
    assert "actor process 0" in err and "stalled" in err
    run.assert_nothing_left(pids)


def test_restart_actors_replaces_a_killed_actor(tmp_path):
    run = Launch(tmp_path / "run", "--config", "paac_classic", "--steps", "60000", "--set", "actors.procs=2",
                 "--set", "algo.name=impala", "--set", "actors.restart_actors=true", "--set", "logging.interval_s=0.5")
    pids = run.wait_for_actors(2)
    os.kill(pids[0], signal.SIGKILL)
    code, err, _ = run.wait(timeout=120)
    assert code == 0, err
    assert "restarting it" in run.out
    assert ckpt.load(ckpt.latest(tmp_path / "run" / "checkpoints"))["step"] >= 60000
    run.assert_nothing_left(pids)


def test_sigint_stops_within_seconds_with_checkpoint(tmp_path):
    run = Launch(tmp_path / "run", *ASYNC_CARTPOLE)
    pids = run.wait_for_actors(2)
    run.signal(signal.SIGINT)
    code, err, seconds = run.wait(timeout=15)
    assert code == 130, err
    assert seconds < 10
    state = ckpt.load(ckpt.latest(tmp_path / "run" / "checkpoints"))
    assert state["step"] > 0
    run.assert_nothing_left(pids)


def test_kill_9_runner_orphans_exit_and_next_launch_cleans_up(tmp_path):
    run = Launch(tmp_path / "run", *ASYNC_CARTPOLE)
    pids = run.wait_for_actors(2)
    run.wait_for_checkpoint()
    run.signal(signal.SIGKILL)
    run.proc.communicate(timeout=10)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "orphaned actors kept running"
    socket = tmp_path / "run" / "ipc" / "control.sock"
    assert not socket.exists(), "the orphaned actors left the killed runner's socket behind"
    # a kill -9 of the whole process group leaves it: the next launch removes it
    socket.parent.mkdir(mode=0o700, exist_ok=True)
    socket.touch()

    step = ckpt.load(ckpt.latest(tmp_path / "run" / "checkpoints"))["step"]
    resumed = Launch(tmp_path / "run", "--steps", str(step + 2000), resume=True)
    code, err, _ = resumed.wait(timeout=90)
    assert code == 0, err
    assert ckpt.load(ckpt.latest(tmp_path / "run" / "checkpoints"))["step"] >= step + 2000
    resumed.assert_nothing_left([])
    assert "stale socket" in resumed.out


def test_an_orphan_removes_only_the_socket_its_runner_bound(tmp_path):
    """An orphaned actor removes its killed runner's socket, but not one a resumed run has
    bound at the same path since (it may notice its parent's death late)."""
    import socket as sockets

    from parallel_rl.runtime.control import Endpoint

    endpoint = Endpoint(tmp_path / "run")
    killed = sockets.socket(sockets.AF_UNIX)
    killed.bind(str(endpoint.path))
    seen = endpoint.socket_identity()
    os.unlink(endpoint.path)  # the resume removes the stale socket and binds its own
    resumed = sockets.socket(sockets.AF_UNIX)
    resumed.bind(str(endpoint.path))
    endpoint.close_if_still(seen)
    assert endpoint.path.exists(), "the orphan removed the resumed run's socket"
    endpoint.close_if_still(endpoint.socket_identity())
    assert not endpoint.path.exists() and not endpoint.folder.exists()
    killed.close()
    resumed.close()
