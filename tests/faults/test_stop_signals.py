"""SIGINT and SIGTERM at seeded random moments of an asynchronous run's first 30 s.

Each case starts a real run through the CLI (2 actor processes, IMPALA, CartPole), waits
until the CLI handles signals itself (its first act), sleeps a seeded random delay and
sends one signal, to the runner alone or to its whole process group (what Ctrl-C in a
terminal and `kill -- -PGID` do). The delays are drawn from ten consecutive bins covering
0-30 s, denser early on, so every phase is hit: configuration, the runner's start-up,
actors starting (importing torch, building EnvPools), the first rollouts, steady training.

Every case must exit within 10 s (its actors too) with 128 + the signal number and no
traceback, leave no process, socket, /dev/shm entry or temporary file, and, once the
run directory exists, hold a checkpoint that loads into a freshly built network.
"""

import random
import signal
import time

import pytest
import torch

from parallel_rl import checkpoint as ckpt
from parallel_rl.algos import make_algorithm
from parallel_rl.config import build_config, from_dict
from parallel_rl.envs import env_spec
from parallel_rl.runtime import signals
from parallel_rl.runtime.pipeline import ActorProcessPool

from .helpers import ASYNC_CARTPOLE, Launch

# processes killed, stopped and signalled at random moments: minutes in all, so not in the fast tier
pytestmark = pytest.mark.slow


BINS = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 8), (8, 12), (12, 20), (20, 30)]
_rng = random.Random(8)
CASES = [
    (round(_rng.uniform(low, high), 2), (signal.SIGINT, signal.SIGTERM)[i % 2], i % 4 >= 2)
    for i, (low, high) in enumerate(BINS)
]


@pytest.mark.parametrize("delay, signum, to_group", CASES,
                         ids=[f"{d:05.2f}s-{signal.Signals(s).name}-{'group' if g else 'runner'}" for d, s, g in CASES])
def test_stop_signal_at_a_random_moment(tmp_path, delay, signum, to_group):
    run_dir = tmp_path / "run"
    run = Launch(run_dir, *ASYNC_CARTPOLE)
    run.wait_for_signal_handlers()
    time.sleep(delay)
    run.signal(signum, group=to_group)
    code, err, seconds = run.wait(timeout=30)

    assert seconds < 10, f"took {seconds:.1f} s to exit"
    assert code == 128 + signum, (code, err)
    assert "Traceback" not in err, err
    if run_dir.exists():
        path = ckpt.latest(run_dir / "checkpoints")
        assert path is not None, f"the run directory exists but holds no checkpoint: {run.out}"
        state = ckpt.load(path)
        cfg = from_dict(state["config"])
        ckpt.restore(make_algorithm(env_spec(cfg.env), cfg, torch.device("cpu")), state, path, cfg.env.id)
        outcome = f"checkpoint at step {state['step']}"
    else:  # stopped while the CLI was still reading the configuration: nothing was created
        assert f"interrupted by {signal.Signals(signum).name}" in err, err
        outcome = "stopped before the run directory existed"
    print(f"{delay:5.2f} s {signal.Signals(signum).name} to the {'group' if to_group else 'runner'}: "
          f"exit {code} after {seconds:.1f} s, {outcome}")
    run.assert_nothing_left([])


def test_an_interrupt_while_actors_start_leaves_nothing(tmp_path, monkeypatch):
    """The start-up hole made deterministic: a stop signal that raises while ActorProcessPool
    starts its second actor must stop the first one and remove the control socket."""
    cfg = build_config("paac_classic", overrides=["actors.procs=2", "actors.num_envs=4", "logging.console=false"])
    spec = env_spec(cfg.env)
    algo = make_algorithm(spec, cfg, torch.device("cpu"))
    real_start, started = ActorProcessPool._start, []

    def start(self, k, free_slots):
        if k == 1:
            raise signals.Interrupted(signal.SIGINT)
        real_start(self, k, free_slots)
        started.append(self.processes[k])

    monkeypatch.setattr(ActorProcessPool, "_start", start)
    with pytest.raises(signals.Interrupted):
        ActorProcessPool(cfg, spec, algo, torch.device("cpu"), 2, tmp_path, env_threads=1, start_version=0, log=lambda _: None)
    assert len(started) == 1 and not started[0].is_alive(), "the actor already started was left running"
    assert not (tmp_path / "ipc").exists(), "the control socket was left behind"


@pytest.mark.parametrize("updates_before", [0, 2])
def test_a_second_stop_signal_inside_an_update_leaves_no_checkpoint_that_mislabels_it(tmp_path, capsys, updates_before):
    """Ctrl-C twice while an update is under way: the second raises at once, after the
    optimizer stepped but before the step and update counts moved on. A final checkpoint
    written then would hold the new weights under the old counts (resumed, the update is
    taken twice). Every checkpoint left must hold the weights that its own update count says."""
    from parallel_rl.algos.paac import PAAC
    from parallel_rl.runtime.runner import Runner

    weights_after = [None]  # the policy's weights after each number of updates, from 0

    class PressedTwice(PAAC):
        def update(self, batch):
            result = super().update(batch)
            if len(weights_after) == updates_before + 1:  # the optimizer has stepped; the counts have not moved
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)
            weights_after.append({k: v.clone() for k, v in self.acting.state_dict().items()})
            return result

    cfg = build_config("paac_classic", overrides=["logging.console=true", "actors.procs=0", "actors.num_envs=4",
                                                  "total_steps=2000", "checkpoint.interval_steps=0"])

    def make(spec, c, device):
        algo = PressedTwice(spec, c, device)
        weights_after[0] = {k: v.clone() for k, v in algo.acting.state_dict().items()}
        return algo

    with pytest.raises(signals.Interrupted):
        Runner(cfg, tmp_path / "run", algorithm=make).run()
    assert len(weights_after) == updates_before + 1, "the second signal did not stop the run inside the update"
    for path in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints"):
        state = ckpt.load(path)
        saved, expected = state["algo"]["policy"], weights_after[state["updates"]]
        assert all(torch.equal(saved[k], expected[k]) for k in expected), \
            f"{path.name} says {state['updates']} updates but holds other weights"
    assert "stopped inside an update: no final checkpoint" in capsys.readouterr().out
