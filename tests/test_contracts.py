"""The contracts (parallel_rl/contracts.py): every algorithm's Policy is all that acting
needs, and an algorithm defined outside the package trains through the real CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from parallel_rl import checkpoint as ckpt
from parallel_rl.algos import make_algorithm, make_policy
from parallel_rl.config import build_config
from parallel_rl.contracts import Policy, UpdateResult
from parallel_rl.envs import env_spec

PLUGINS = Path(__file__).parent / "plugins"
CPU = torch.device("cpu")


@pytest.mark.parametrize("recipe", ["paac_classic", "ppo_classic", "pqn_classic", "qrdqn_classic", "simbav2_pendulum"])
def test_the_policy_an_actor_process_builds_holds_exactly_what_the_learner_publishes(recipe):
    cfg = build_config(recipe, overrides=["algo.name=impala"] if recipe == "paac_classic" else [])
    spec = env_spec(cfg.env)
    algo = make_algorithm(spec, cfg, CPU)
    replica = make_policy(spec, cfg, CPU)
    assert isinstance(replica, Policy) and isinstance(algo.policy(), Policy)
    published = algo.policy().state_dict()
    assert list(replica.state_dict()) == list(published)
    # nothing of learning rides along: no critic, target network, optimizer or replay
    assert not any(re.search(r"critic|target", key) for key in published), list(published)
    replica.load_state_dict(published)
    obs = torch.randn((5, *spec.obs_shape))
    torch.manual_seed(0)
    expected = algo.policy().act(obs, greedy=True)
    torch.manual_seed(0)
    got = replica.act(obs, greedy=True)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_update_reports_skipped_steps_apart_from_its_metrics():
    cfg = build_config("paac_classic")
    spec = env_spec(cfg.env)
    algo = make_algorithm(spec, cfg, CPU)
    from parallel_rl.runtime.pipeline import InlineSource

    source = InlineSource(cfg, spec, algo, CPU, env_threads=1)
    try:
        batch = source.next_batch(0, lambda: False).batch
    finally:
        source.close()
    result = algo.update(batch)
    assert isinstance(result, UpdateResult) and not result.skipped
    assert all(tag.split("/")[0] in ("losses", "diag", "charts") for tag in result.metrics)
    batch.rewards[0, 0] = float("nan")
    poisoned = algo.update(batch)
    assert poisoned.skipped and float(poisoned.skipped_steps) == 1.0


@pytest.mark.slow
@pytest.mark.learning
def test_an_algorithm_outside_the_package_trains_through_the_cli_with_an_actor_process(tmp_path):
    """tests/plugins/toy_a2c.py declares its config section and Policy and is named by its
    import path; the actor process builds its Policy from that path too. A random policy scores
    about 22. The toy samples from torch's generator, which acting seeds per call, so a run with
    an actor process reproduces: seeds 1, 2 and 3 ended at 286.2, 275.25 and 269.05, twice for
    seed 1, the same under default and AVX2 kernels."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), os.environ.get("PYTHONPATH", "")])}
    run_dir = tmp_path / "run"
    launch = subprocess.run(
        [sys.executable, "-m", "parallel_rl", "launch", "--config", str(PLUGINS / "toy_a2c.yaml"), "--actor-procs", "1",
         "--seed", "1", "--run-dir", str(run_dir), "--set", "logging.console=true"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path,
    )
    assert launch.returncode == 0, launch.stderr[-3000:]
    assert "layout: 1 actor processes" in launch.stdout
    recent = float(re.search(r"recent mean return (-?[\d.]+)", launch.stdout).group(1))
    assert recent >= 100, launch.stdout[-2000:]
    state = ckpt.load(ckpt.latest(run_dir / "checkpoints"))
    assert state["config"]["algo"] == {"name": "toy_a2c:ToyA2C", "rollout_length": 16, "gamma": 0.99, "max_grad_norm": 3.0,
                                       "entropy_coef": 0.01}
    evaluation = subprocess.run([sys.executable, "-m", "parallel_rl", "eval", str(run_dir), "--episodes", "2"],
                                capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert evaluation.returncode == 0 and "mean return" in evaluation.stdout, evaluation.stderr[-2000:]


def test_an_unimportable_algorithm_path_is_a_one_paragraph_error(capsys):
    from parallel_rl.cli import main

    code = main(["launch", "--config", "paac_classic", "--dry-run", "--set", "algo.name=no_such_module:Algo"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "cannot import module 'no_such_module'" in err and "PYTHONPATH" in err, err
