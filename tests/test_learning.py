"""Seeded learning tests: returns must rise past a threshold, on CPU."""

import re
import subprocess
import sys

import pytest

from parallel_rl.config import build_config
from parallel_rl.runtime.runner import Runner


@pytest.mark.slow
@pytest.mark.learning
def test_paac_learns_cartpole(tmp_path):
    cfg = build_config("paac_classic", {"seed": 1}, ["logging.console=false"])
    summary = Runner(cfg, tmp_path / "run").run()
    assert summary.final_step == cfg.total_steps
    # mean over the last 20 completed episodes (logging.return_window)
    assert summary.recent_return >= 450, summary


@pytest.mark.slow
@pytest.mark.learning
@pytest.mark.parametrize("recipe", ["ppo_classic", "pqn_classic"])
def test_ppo_and_pqn_learn_cartpole(tmp_path, recipe):
    cfg = build_config(recipe, {"seed": 1}, ["logging.console=false"])
    assert cfg.actors.procs == 0  # synchronous: the seeded run is reproducible
    summary = Runner(cfg, tmp_path / "run").run()
    assert summary.final_step >= cfg.total_steps
    assert summary.recent_return >= 450, summary


@pytest.mark.slow
@pytest.mark.learning
def test_pqn_walks_the_cliff_edge_on_one_hot_observations(tmp_path):
    """CliffWalking's observation is Discrete(48), one-hot encoded; through the CLI, the greedy
    policy after training reaches the goal in at most 15 steps (return -15: the path one row
    above the cliff's edge; -13 is the edge path, -100 a policy that loops to the time limit)."""
    run_dir = tmp_path / "run"
    cli = [sys.executable, "-m", "parallel_rl"]
    launch = subprocess.run([*cli, "launch", "--config", "pqn_toytext", "--seed", "1", "--run-dir", str(run_dir)],
                            capture_output=True, text=True, timeout=900)
    assert launch.returncode == 0, launch.stderr
    assert "CliffWalking-v1 (gymnasium)" in launch.stdout
    evaluation = subprocess.run([*cli, "eval", str(run_dir), "--greedy", "--episodes", "1"],
                                capture_output=True, text=True, timeout=300)
    assert evaluation.returncode == 0, evaluation.stderr
    score = float(re.search(r"mean return (-?[0-9.]+)", evaluation.stdout).group(1))
    assert score >= -15.0, evaluation.stdout
