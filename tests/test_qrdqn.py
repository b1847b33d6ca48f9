"""QR-DQN: the quantile-Huber loss by hand, epsilon-greedy acting and its schedule, the
update cadence, the recipes, a short Pong run through the CLI, bad input, and a seeded
CartPole learning test."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from parallel_rl import checkpoint as ckpt
from parallel_rl.algos.policies import per_actor_epsilons
from parallel_rl.algos.qrdqn import QRDQN, quantile_huber_loss, quantile_midpoints
from parallel_rl.config import CONFIG_DIR, build_config
from parallel_rl.contracts import Batch
from parallel_rl.envs import env_spec
from parallel_rl.runtime.runner import Runner


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "parallel_rl.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_quantile_huber_loss_hand_computed():
    quantiles = torch.tensor([[0.0, 1.0]])  # at tau = 0.25, 0.75
    targets = torch.tensor([[0.5, 3.0]])
    # kappa 1. tau .25: u = .5 -> .25 * .125, u = 3 -> .25 * (3 - .5); mean .328125
    #          tau .75: u = -.5 -> |.75 - 1| * .125, u = 2 -> .75 * (2 - .5); mean .578125
    assert quantile_huber_loss(quantiles, targets, 1.0).item() == pytest.approx(0.90625)
    # kappa 2 (divided by kappa). tau .25: .25 * .125 / 2, .25 * 2 * (3 - 1) / 2; mean .2578125
    #                             tau .75: .25 * .125 / 2, .75 * .5 * 2^2 / 2; mean .3828125
    assert quantile_huber_loss(quantiles, targets, 2.0).item() == pytest.approx(0.640625)
    # per sample: a second, identical row gives the same value again
    assert quantile_huber_loss(quantiles.repeat(2, 1), targets.repeat(2, 1)).tolist() == pytest.approx([0.90625] * 2)


def test_minimising_the_loss_finds_the_quantiles():
    # samples of U(0, 1): with a small kappa the minimiser is each tau_i's quantile, tau_i itself
    targets = torch.linspace(0, 1, 1001).unsqueeze(0)
    quantiles = torch.zeros(1, 4, requires_grad=True)
    optimizer = torch.optim.Adam([quantiles], lr=0.01)
    for _ in range(600):
        optimizer.zero_grad()
        quantile_huber_loss(quantiles, targets, kappa=0.001).sum().backward()
        optimizer.step()
    assert quantiles.detach().flatten().tolist() == pytest.approx(quantile_midpoints(4).tolist(), abs=0.01)


def _cartpole(*overrides):
    cfg = build_config("qrdqn_classic", {}, ["logging.diag_interval=0", *overrides])
    return QRDQN(env_spec(cfg.env), cfg, torch.device("cpu")), cfg


def test_epsilon_greedy_actions_and_their_log_probabilities():
    torch.manual_seed(0)
    algo, _ = _cartpole()
    algo.policy().epsilon.fill_(0.3)
    obs = torch.randn(4000, 4)
    greedy, greedy_log_probs = algo.policy().act(obs, greedy=True)
    assert torch.equal(greedy_log_probs, torch.zeros(4000))
    actions, log_probs = algo.policy().act(obs)
    on_greedy = actions == greedy
    assert torch.allclose(log_probs, torch.where(on_greedy, math.log(0.3 / 2 + 0.7), math.log(0.3 / 2)))
    assert float((~on_greedy).float().mean()) == pytest.approx(0.15, abs=0.02)  # epsilon x 1/2 of the actions


def test_per_actor_epsilons_follow_apex():
    assert per_actor_epsilons(torch.tensor(0.4), 3, 7.0).tolist() == pytest.approx([0.4, 0.4**4.5, 0.4**8])
    algo, _ = _cartpole("algo.exploration=per_actor")
    algo.set_progress(5000 / 50000)  # past the warm-up: the base epsilon
    assert float(algo.policy().epsilon) == pytest.approx(0.4)
    obs = torch.randn(5, 4)
    greedy, _ = algo.policy().act(obs, greedy=True)
    actions, log_probs = algo.policy().act(obs)
    eps = per_actor_epsilons(torch.tensor(0.4), 5, 7.0)
    assert torch.allclose(log_probs, torch.where(actions == greedy, eps / 2 + 1 - eps, eps / 2).log(), atol=1e-6)


def test_epsilon_schedule_in_agent_steps():
    algo, cfg = _cartpole("algo.warmup_steps=1000", "algo.epsilon_decay_steps=10000", "algo.epsilon_end=0.01")
    assert algo.epsilon_at(999) == 1.0  # uniformly random while the replay fills
    assert algo.epsilon_at(1000) == 1.0
    assert algo.epsilon_at(6000) == pytest.approx(1 + 0.5 * (0.01 - 1))
    assert algo.epsilon_at(10**6) == pytest.approx(0.01)
    algo.set_progress(6000 / cfg.total_steps)
    assert float(algo.policy().epsilon) == pytest.approx(0.505)  # in the buffer actor processes receive


def _batch(horizon, num_envs, autoreset_steps=()):
    autoreset = torch.zeros(horizon, num_envs, dtype=torch.bool)
    for t, n in autoreset_steps:
        autoreset[t, n] = True
    return Batch(
        obs=torch.randn(horizon, num_envs, 4), actions=torch.randint(2, (horizon, num_envs)),
        behaviour_log_probs=torch.zeros(horizon, num_envs), behaviour_values=torch.full((horizon, num_envs), torch.nan),
        rewards=torch.ones(horizon, num_envs),
        terminated=torch.zeros(horizon, num_envs, dtype=torch.bool), truncated=torch.zeros(horizon, num_envs, dtype=torch.bool),
        autoreset=autoreset, next_obs=torch.randn(num_envs, 4),
    )


def test_gradient_steps_per_new_transition_and_hard_target_updates():
    algo, _ = _cartpole("algo.warmup_steps=65", "algo.utd_ratio=0.25", "algo.target_period=16", "actors.num_envs=8")
    assert algo.target_every == 4  # 16 agent steps at one gradient step per 4
    metrics = algo.update(_batch(8, 8)).metrics  # 64 rows: still warming up
    assert "losses/quantile_huber" not in metrics and algo.gradient_steps == 0
    # 32 rows, 2 of them auto-reset steps: 30 transitions x 0.25 = 7.5 -> 7 steps, 0.5 carried over
    algo.update(_batch(4, 8, [(0, 1), (2, 5)]))
    assert algo.gradient_steps == 7
    metrics = algo.update(_batch(4, 8, [(0, 1), (2, 5)])).metrics
    assert algo.gradient_steps == 15 and math.isfinite(float(metrics["losses/quantile_huber"]))
    algo.gradient_step()  # the 16th: a multiple of 4, so the target is the online network now
    assert all(torch.equal(a, b) for a, b in zip(algo.net.parameters(), algo.target_net.parameters(), strict=True))
    algo.gradient_step()
    assert not all(torch.equal(a, b) for a, b in zip(algo.net.parameters(), algo.target_net.parameters(), strict=True))


def test_a_non_finite_loss_skips_the_gradient_step_and_says_so():
    algo, _ = _cartpole("algo.warmup_steps=8", "algo.utd_ratio=0.25", "actors.num_envs=8")
    poisoned = _batch(8, 8)
    poisoned.rewards.fill_(float("nan"))
    before = [p.detach().clone() for p in algo.net.parameters()]
    result = algo.update(poisoned)
    assert float(result.skipped_steps) >= 1 and float(result.skipped_steps) == algo.gradient_steps
    assert all(torch.equal(a, b) for a, b in zip(before, algo.net.parameters(), strict=True))
    # Adam's moments untouched: none yet (torch's loop never stepped), or the fused kernel's
    # fresh zeros with its step count taken back (a NaN step would leave NaN moments)
    for moments in algo.optimizer.state_dict()["state"].values():
        assert float(moments["step"]) == 0 and not moments["exp_avg"].any() and not moments["exp_avg_sq"].any()



@pytest.mark.parametrize("prioritized", [True, False])
def test_a_gradient_step_asks_nothing_of_the_device(no_host_syncs, prioritized):
    """A gradient step, on the Atari recipes' prioritized replay or a uniform one, decides
    whether to write its priorities on the device: nothing in it waits for a GPU (a tensor read
    as a Python value, ``torch.unique``, a boolean mask). A step the optimizer skipped leaves
    every priority as it was."""
    algo, _ = _cartpole("algo.warmup_steps=8", "algo.utd_ratio=0.25", "actors.num_envs=8", f"replay.prioritized={prioritized}")
    algo.update(_batch(8, 8))
    assert algo.gradient_steps >= 1 and algo.replay.can_sample()
    tree = algo.replay.data.get("priority_tree", torch.zeros(1))
    with no_host_syncs():
        before = tree.clone()
        _, stepped = algo.gradient_step()
        changed = tree.clone()
        algo.replay.data["rewards"].fill_(float("nan"))  # every target non-finite: the next step is skipped
        _, skipped_stepped = algo.gradient_step()
        after_skip = tree.clone()
    assert bool(stepped) and torch.equal(changed, before) != prioritized
    assert not bool(skipped_stepped) and torch.equal(after_skip, changed)


def test_small_batch_recipe_is_the_atari_recipe_with_minibatches_of_8():
    atari = yaml.safe_load((CONFIG_DIR / "qrdqn_atari.yaml").read_text())
    small = yaml.safe_load((CONFIG_DIR / "qrdqn_small_batch.yaml").read_text())
    assert atari["replay"].pop("minibatch_size") == 32
    assert small["replay"].pop("minibatch_size") == 8
    assert atari == small
    # and the sweep's batch8 variant is that recipe
    sweep = yaml.safe_load((Path(__file__).parents[1] / "launch" / "sweeps" / "qrdqn_small_batch.yaml").read_text())
    variants = {v["name"]: v["set"] for v in sweep["overrides"]}
    assert (build_config(sweep["config"], {}, variants["batch8"]).to_dict()
            == build_config("qrdqn_small_batch").to_dict())
    assert build_config(sweep["config"], {}, variants["batch32"]).to_dict() == build_config("qrdqn_atari").to_dict()




@pytest.mark.slow  # a real run of minutes' worth on busy cores
def test_short_pong_run_fills_the_replay_trains_and_writes_tensorboard(tmp_path, read_scalars):
    run = tmp_path / "pong"
    # the recipe (one actor process on this machine) with a smaller torso, learning from 400 agent steps on
    out = cli("launch", "--config", "qrdqn_atari", "--actors", "4", "--steps", "1200", "--run-dir", str(run),
              "--set", "algo.warmup_steps=400", "--set", "algo.target_period=200", "--set", "replay.capacity=4000",
              "--set", "replay.minibatch_size=8", "--set", "model.width=64", "--set", "algo.num_quantiles=16",
              "--set", "env.max_episode_steps=60", "--set", "logging.interval_s=0")
    assert out.returncode == 0, out.stderr
    tags = read_scalars(run)
    assert max(tags["diag/replay_size"]) == 1200  # every agent step is a row
    assert max(tags["diag/gradient_steps"]) >= 150  # (1200 - 400) agent steps x 0.25, less the last n-step rows
    assert all(math.isfinite(v) for v in tags["losses/quantile_huber"])
    assert tags["charts/epsilon"][0] == 1.0 and min(tags["charts/epsilon"]) < 1.0
    assert max(tags["diag/replay_breaks"]) == 0
    assert "charts/episodic_return" in tags
    assert ckpt.latest(run / "checkpoints").name == "step_1200.pt"
    evaluated = cli("eval", str(run), "--episodes", "2", "--greedy")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "mean return" in evaluated.stdout


@pytest.mark.parametrize("args, names", [
    (["--set", "replay.capacity=40"], ["replay.capacity = 40", "algo.rollout_length", "env.frame_stack"]),
    (["--set", "algo.exploration=apex"], ["algo.exploration", "linear", "per_actor"]),
    (["--set", "algo.warmup_steps=100000"], ["algo.warmup_steps = 100000", "replay.capacity 50000"]),
    # 50000 // 3 envs = 16666 steps each: the replay holds 49998, and learning never started
    (["--actors", "3", "--set", "algo.warmup_steps=50000"], ["algo.warmup_steps = 50000", "the 49998 agent steps"]),
    (["--env", "Pendulum-v1"], ["continuous actions", "needs discrete actions", "--config simbav2_pendulum"]),
    # a warm-up as long as the run: it would end before its first gradient step
    (["--set", "algo.warmup_steps=2000"], ["algo.warmup_steps = 2,000 is not below total_steps = 2,000", "--steps"]),
])
def test_bad_input_exits_2_with_a_message(args, names, tmp_path):
    out = cli("launch", "--config", "qrdqn_classic", "--steps", "2000", *args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    for name in names:
        assert name in out.stderr, out.stderr


@pytest.mark.slow
@pytest.mark.learning
def test_qrdqn_learns_cartpole(tmp_path):
    cfg = build_config("qrdqn_classic", {"seed": 1}, ["logging.console=false"])
    summary = Runner(cfg, tmp_path / "run").run()
    assert summary.final_step >= cfg.total_steps  # the budget rounded up to whole rollouts
    # mean over the last 20 completed episodes (logging.return_window)
    assert summary.recent_return >= 400, summary


@pytest.mark.parametrize("recipe, exploration", [("qrdqn_classic", "linear"), ("qrdqn_classic", "per_actor"),
                                                 ("pqn_classic", "linear")])
def test_evaluation_acts_with_epsilon_one_in_a_thousand_in_every_env(recipe, exploration):
    """Dopamine evaluates with epsilon 0.001, whatever the training schedule reached (and
    without per-actor exploration's spread across envs)."""
    from parallel_rl.algos import make_algorithm

    cfg = build_config(recipe, overrides=[f"algo.exploration={exploration}"] if recipe.startswith("qrdqn") else [])
    algo = make_algorithm(env_spec(cfg.env), cfg, torch.device("cpu"))
    algo.set_progress(1.0)
    policy = algo.policy()
    assert float(policy.epsilon) != pytest.approx(0.001)
    policy.prepare_evaluation(cfg)
    obs = torch.randn(64, 4)
    greedy, _ = policy.act(obs, greedy=True)
    actions, log_probs = policy.act(obs)
    on_greedy = actions == greedy
    expected = torch.where(on_greedy, math.log(1 - 0.001 + 0.001 / 2), math.log(0.001 / 2))
    assert torch.allclose(log_probs, expected, rtol=0, atol=1e-6)  # float32 log near 1


@pytest.mark.parametrize("recipe", ["qrdqn_atari", "qrdqn_small_batch"])
def test_atari_recipes_replay_with_dopamines_priorities(recipe):
    """Dopamine's QR-DQN samples in proportion to sqrt(loss) and weighs losses by 1/sqrt(P)."""
    replay = build_config(recipe).replay
    assert replay.prioritized and (replay.priority_exponent, replay.importance_exponent) == (0.5, 0.5)
