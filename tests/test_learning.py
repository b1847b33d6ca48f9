"""Seeded learning tests: returns must rise past a threshold, on CPU."""

import pytest

from parallel_rl.config import build_config
from parallel_rl.runtime.runner import Runner


@pytest.mark.slow
def test_paac_learns_cartpole(tmp_path):
    cfg = build_config("paac_classic", {"seed": 1}, ["logging.console=false"])
    summary = Runner(cfg, tmp_path / "run").run()
    assert summary.final_step == cfg.total_steps
    # mean over the last 20 completed episodes (logging.return_window)
    assert summary.recent_return >= 450, summary


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["ppo_classic", "pqn_classic"])
def test_ppo_and_pqn_learn_cartpole(tmp_path, recipe):
    cfg = build_config(recipe, {"seed": 1}, ["logging.console=false"])
    assert cfg.actors.procs == 0  # synchronous: the seeded run is reproducible
    summary = Runner(cfg, tmp_path / "run").run()
    assert summary.final_step >= cfg.total_steps
    assert summary.recent_return >= 450, summary
