"""The asynchronous pipeline: slot protocol, deterministic lag, learning with actor processes."""

import numpy as np
import pytest
import torch

from parallel_rl import checkpoint as ckpt
from parallel_rl.algos import make_algorithm
from parallel_rl.config import build_config
from parallel_rl.envs import env_spec
from parallel_rl.runtime.pipeline import ActorPool
from parallel_rl.runtime.runner import Runner
from parallel_rl.runtime.slots import SlotPool


def _cfg(*overrides, recipe="paac_classic"):
    return build_config(recipe, overrides=["logging.console=false", *overrides])


def test_fresh_slots_hold_the_sentinel():
    cfg = _cfg()
    pool = SlotPool(env_spec(cfg.env), 4, [3, 2], 2)
    batch = pool.read([0, 2])
    assert torch.isnan(batch["rewards"]).all() and torch.isnan(batch["obs"]).all()
    assert (batch["actions"] == -1).all() and (pool.version == -1).all()
    assert batch["obs"].shape == (4, 5, 4) and batch["next_obs"].shape == (5, 4)


@pytest.mark.parametrize("slots_per_actor", [1, 3])
def test_every_slot_consumed_exactly_once_in_order(tmp_path, slots_per_actor):
    """Each env's rollouts must chain: the observation after rollout r is the first of r + 1.

    A lost slot breaks the chain, a duplicated one repeats it, and a slot read before it
    was complete shows the sentinel (NaN) or a stale observation.
    """
    cfg = _cfg("actors.num_envs=6", "actors.procs=2", f"actors.slots_per_actor={slots_per_actor}",
               "actors.max_policy_lag=1000000", "algo.rollout_length=3")
    spec = env_spec(cfg.env)
    algo = make_algorithm(spec, cfg, torch.device("cpu"))
    source = ActorPool(cfg, spec, algo, torch.device("cpu"), 2, tmp_path, env_threads=1, start_version=0, log=lambda _: None)
    try:
        previous_next_obs = None
        for update in range(40):
            delivery = source.next_batch(update, lambda: False)
            batch = delivery.batch
            assert delivery.dropped == 0
            assert not torch.isnan(batch.obs).any() and not torch.isnan(batch.next_obs).any()
            assert not torch.isnan(batch.rewards).any() and (batch.actions >= 0).all()
            if previous_next_obs is not None:
                assert torch.equal(batch.obs[0], previous_next_obs), f"chain broken at update {update}"
            previous_next_obs = batch.next_obs.clone()
            source.published(update + 1)
    finally:
        source.close()
    assert not (tmp_path / "ipc").exists()


def test_deterministic_lag_is_reproducible(tmp_path):
    def run(name):
        cfg = _cfg("actors.procs=2", "actors.deterministic_lag=true", "algo.name=impala", "total_steps=4000")
        summary = Runner(cfg, tmp_path / name).run()
        return summary, ckpt.load(summary.checkpoint)

    first, state_a = run("a")
    second, state_b = run("b")
    assert first.updates == second.updates == 50
    for name, tensor in state_a["algo"]["net"].items():
        assert torch.equal(tensor, state_b["algo"]["net"][name]), name
    assert state_a["recent_returns"] == state_b["recent_returns"]


@pytest.mark.slow
@pytest.mark.learning
def test_impala_learns_cartpole_with_two_actor_processes(tmp_path):
    cfg = _cfg("actors.procs=2", "algo.name=impala", "seed=1")
    summary = Runner(cfg, tmp_path / "run").run()
    assert summary.final_step >= cfg.total_steps
    assert summary.recent_return >= 450, summary
    returns = np.array(ckpt.load(summary.checkpoint)["recent_returns"])
    assert len(returns) == cfg.logging.return_window
