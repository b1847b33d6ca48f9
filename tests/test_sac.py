"""SAC / SimbaV2: hyperspherical weights, the C51 projection, reward scaling, replay,
warm-up, the UTD ratio, action rescaling, checkpoints, the CLI and a seeded learning run."""

import io
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from parallel_rl import checkpoint as ckpt
from parallel_rl.algos import check_fit
from parallel_rl.algos.distributional import (
    RewardScaler,
    categorical_td_target,
    project_categorical,
)
from parallel_rl.algos.returns import heuristic_discount
from parallel_rl.algos.sac import SAC, rollout_transitions
from parallel_rl.config import ConfigError, EnvConfig, build_config
from parallel_rl.contracts import Batch, Delivery, UpdateResult
from parallel_rl.envs import env_spec, make_env
from parallel_rl.nn.simba import HyperLinear, project_to_sphere
from parallel_rl.replay import Transitions, UniformReplay
from parallel_rl.runtime.runner import Runner
from parallel_rl.runtime.slots import SharedWeights

CPU = torch.device("cpu")
F, T = False, True


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Networks this small run fastest on one thread, and do not stall when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_sac(*overrides: str) -> SAC:
    """SimbaV2 SAC on Pendulum's spec (3-d observations, 1-d actions) with tiny networks."""
    cfg = build_config("simbav2_pendulum", overrides=[
        "model.width=16", "model.critic_width=32", "replay.capacity=1000", "replay.minibatch_size=8",
        "algo.warmup_steps=10", "algo.utd_ratio=2", *overrides,
    ])
    return SAC(env_spec(cfg.env), cfg, CPU)


def rollout(horizon=8, num_envs=4, autoreset=None, terminated=None, truncated=None, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    flags = torch.zeros(horizon, num_envs, dtype=torch.bool)
    return Batch(
        obs=torch.randn(horizon, num_envs, 3, generator=g),
        actions=torch.rand(horizon, num_envs, 1, generator=g) * 2 - 1,
        behaviour_log_probs=torch.zeros(horizon, num_envs),
        behaviour_values=torch.full((horizon, num_envs), torch.nan),
        rewards=-torch.rand(horizon, num_envs, generator=g) * 10,
        terminated=flags.clone() if terminated is None else terminated,
        truncated=flags.clone() if truncated is None else truncated,
        autoreset=flags.clone() if autoreset is None else autoreset,
        next_obs=torch.randn(num_envs, 3, generator=g),
    )


# ---------------------------------------------------------------------------- SimbaV2 blocks


def hyper_layers(algo: SAC) -> list[HyperLinear]:
    return [m for net in (algo.net, algo.critic) for m in net.modules() if isinstance(m, HyperLinear)]


def test_hyperspherical_weights_have_unit_rows_after_every_optimizer_step():
    torch.manual_seed(0)
    algo = small_sac()
    algo.update(rollout())  # past the warm-up: takes gradient steps
    layers = hyper_layers(algo)
    # actor: embedding, block (up, down), two heads (hidden, out); critic: embedding, block, head
    assert len(layers) == 7 + 5
    before = [layer.weight.detach().clone() for layer in layers]
    algo.gradient_step(algo.replay.sample(8))
    for layer, old in zip(layers, before, strict=True):
        norms = layer.weight.norm(dim=-1)  # one norm per output unit (and critic member)
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
        assert not torch.equal(layer.weight, old)  # the step did move every matrix

    # without the projection an Adam step leaves the sphere: the check above can fail
    weight = layers[0].weight
    assert weight.grad is not None
    torch.optim.Adam([weight], lr=1e-2).step()
    assert (weight.norm(dim=-1) - 1).abs().max() > 1e-4
    project_to_sphere(algo.net)
    torch.testing.assert_close(weight.norm(dim=-1), torch.ones(weight.shape[:2]), atol=1e-5, rtol=0)


def test_simbav2_scalers_start_as_the_official_code():
    """Embedding and block scalers start at sqrt(2 / width) (blocks' inner one / sqrt(4)), the
    output heads' at exactly 1 (init = scale = 1), alpha at 1 / (depth + 1)."""
    from parallel_rl.nn.simba import HyperHead, LerpBlock

    algo = small_sac()  # actor width 16, depth 1; critic width 32, depth 2
    heads = [m for net in (algo.net, algo.critic) for m in net.modules() if isinstance(m, HyperHead)]
    assert len(heads) == 3  # mean, log_std, critic
    for head in heads:
        assert head.scaler.forward_scale == 1.0
        assert torch.equal(head.scaler.value, torch.ones_like(head.scaler.value))
    assert torch.allclose(algo.net.torso.embedding.scaler.value, torch.tensor(math.sqrt(2 / 16)))
    actor_block = next(m for m in algo.net.modules() if isinstance(m, LerpBlock))
    assert math.isclose(actor_block.up_scaler.value.flatten()[0].item(), math.sqrt(2 / 16) / 2, rel_tol=1e-6)
    assert math.isclose(actor_block.alpha.value.flatten()[0].item() * actor_block.alpha.forward_scale, 1 / 2, rel_tol=1e-6)


def test_lerp_block_keeps_the_official_epsilon_after_relu():
    """With every expanded unit inactive, W2's input is 1e-8 everywhere, not 0."""
    from parallel_rl.nn.simba import LerpBlock

    block = LerpBlock(4, 0.5, 0.5, 0.5, 0.5, members=1)
    seen = {}
    block.down.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    with torch.no_grad():
        block.up.weight.fill_(-1.0)  # relu of W1 h is 0 for a positive h
        block(torch.full((1, 2, 4), 0.5))
    assert torch.equal(seen["x"], torch.full_like(seen["x"], 1e-8))


def test_critic_members_are_independent_networks():
    algo = small_sac()
    out = algo.critic(torch.randn(5, 3), torch.rand(5, 1))
    assert out.shape == (2, 5, 101)
    assert not torch.allclose(out[0], out[1])


# ---------------------------------------------------------------------------- categorical critic


def test_c51_projection_hand_computed():
    # atoms -2, -1, 0, 1, 2 (spacing 1)
    values = torch.tensor([[-3.0, -0.5, 0.25, 2.0, 7.0], [-2.0, -1.0, 0.0, 1.0, 2.0]])
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25], [0.1, 0.2, 0.3, 0.15, 0.25]])
    out = project_categorical(values, probs, -2.0, 2.0, 5)
    # -3 clips to atom -2; -0.5 splits 50/50 between -1 and 0; 0.25 gives 3/4 to 0 and 1/4 to 1;
    # 2.0 sits on the last atom; 7 clips to it
    expected = torch.tensor([[0.1, 0.1, 0.1 + 0.225, 0.075, 0.15 + 0.25], [0.1, 0.2, 0.3, 0.15, 0.25]])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.sum(-1), probs.sum(-1))  # mass conserved


def test_soft_categorical_target_hand_computed():
    uniform = torch.full((2, 5), 0.2)
    target = categorical_td_target(
        uniform, next_log_pi=torch.tensor([-2.0, -2.0]), rewards=torch.tensor([1.0, 1.0]),
        terminated=torch.tensor([False, True]), gamma=0.5, alpha=torch.tensor(0.5), v_min=-2.0, v_max=2.0,
    )
    # row 0: 1 + 0.5 (z + 0.5 * 2) = 0.5, 1, 1.5, 2, 2.5; row 1 (terminated): all mass at r = 1
    torch.testing.assert_close(target, torch.tensor([[0.0, 0.0, 0.1, 0.4, 0.5], [0.0, 0.0, 0.0, 1.0, 0.0]]))


def test_reward_scaling_hand_computed():
    scaler = RewardScaler(gamma=0.5, g_max=2.0)
    # one env: rewards 1, 2, 4 (terminated), an auto-reset step, then 2
    scaler.observe(torch.tensor([[1.0], [2.0]]), torch.tensor([[F], [F]]), torch.tensor([[F], [F]]), torch.tensor([[F], [F]]))
    scaler.observe(torch.tensor([[4.0], [0.0], [2.0]]), torch.tensor([[T], [F], [F]]), torch.tensor([[F], [F], [F]]),
                   torch.tensor([[F], [T], [F]]))
    # G: 1, 0.5 * 1 + 2 = 2.5, 0.5 * 2.5 + 4 = 5.25, (reset) 2
    returns = [1.0, 2.5, 5.25, 2.0]
    mean = sum(returns) / 4
    var = sum((g - mean) ** 2 for g in returns) / 4  # 2.48046875
    assert scaler.var == pytest.approx(var) and scaler.max_abs == 5.25
    assert scaler.scale == pytest.approx(5.25 / 2.0)  # max|G| / g_max = 2.625 > sqrt(var) = 1.575
    torch.testing.assert_close(scaler(torch.tensor([4.0])), torch.tensor([4.0 / 2.625]))
    wide = RewardScaler(gamma=0.5, g_max=10.0)
    wide.load_state_dict(scaler.state_dict())
    assert wide.scale == pytest.approx(math.sqrt(var + 1e-8))  # now the spread decides


def test_discount_heuristic():
    assert heuristic_discount(1000) == pytest.approx(0.995)
    assert heuristic_discount(500) == pytest.approx(0.99)
    assert heuristic_discount(200) == pytest.approx(0.975)
    assert heuristic_discount(50) == 0.95 and heuristic_discount(0) == 0.995


# ---------------------------------------------------------------------------- replay and ingestion


def test_rollout_transitions_skip_autoreset_and_keep_final_observations():
    obs = torch.tensor([[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]]).unsqueeze(-1)  # obs[t, n] = 10 t + n
    batch = Batch(
        obs=obs, actions=torch.zeros(3, 2, 1), behaviour_log_probs=torch.zeros(3, 2),
        behaviour_values=torch.full((3, 2), torch.nan), rewards=torch.ones(3, 2),
        terminated=torch.tensor([[F, F], [T, F], [F, F]]),  # env 0 ends at t = 1 ...
        truncated=torch.tensor([[F, F], [F, F], [F, T]]),  # env 1 is cut off at t = 2
        autoreset=torch.tensor([[F, F], [F, F], [T, F]]),  # ... so its t = 2 only resets it
        next_obs=torch.tensor([[30.0], [31.0]]),
    )
    out = rollout_transitions(batch)
    assert out.obs.flatten().tolist() == [0, 1, 10, 11, 21]
    assert out.next_obs.flatten().tolist() == [10, 11, 20, 21, 31]  # 20: env 0's final observation
    assert out.terminated.tolist() == [F, F, T, F, F]  # the truncation bootstraps


def test_rollout_transitions_take_the_indices_found_on_the_host(monkeypatch):
    """Through the runtime a batch carries its transitions' indices, found on the host: taking
    the transitions out of it asks nothing of the device (no ``nonzero`` behind a mask)."""
    import dataclasses

    batch = Batch(
        obs=torch.arange(6.0).view(3, 2, 1), actions=torch.zeros(3, 2, 1), behaviour_log_probs=torch.zeros(3, 2),
        behaviour_values=torch.full((3, 2), torch.nan), rewards=torch.arange(6.0).view(3, 2),
        terminated=torch.tensor([[F, T], [F, F], [F, F]]), truncated=torch.zeros(3, 2, dtype=torch.bool),
        autoreset=torch.tensor([[F, F], [F, T], [F, F]]), next_obs=torch.tensor([[6.0], [7.0]]),
    )
    expected = rollout_transitions(batch)
    found = dataclasses.replace(batch, transition_indices=torch.tensor([0, 1, 2, 4, 5]))
    indexed = torch.Tensor.__getitem__

    def unmasked(tensor, index):
        if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
            pytest.fail("indexed by a mask, which finds its indices on the device")
        return indexed(tensor, index)

    with monkeypatch.context() as patched:
        patched.setattr(torch.Tensor, "__getitem__", unmasked)
        for name in ("nonzero", "argwhere"):
            patched.setattr(torch.Tensor, name, lambda *_, name=name: pytest.fail(f"Tensor.{name} on the device"))
        out = rollout_transitions(found)
    for name in ("obs", "actions", "rewards", "next_obs", "terminated"):
        assert torch.equal(getattr(out, name), getattr(expected, name)), name
    assert out.rewards.tolist() == [0, 1, 2, 4, 5]


def transitions(values: list[float]) -> Transitions:
    v = torch.tensor(values)
    return Transitions(obs=v.unsqueeze(1), actions=v.unsqueeze(1), rewards=v, next_obs=v.unsqueeze(1) + 0.5,
                       terminated=v > 100)


def test_replay_ring_buffer_sampling_and_state():
    replay = UniformReplay(4, (1,), np.float32, (1,), CPU)
    replay.add(transitions([1, 2, 3]))
    assert len(replay) == 3
    sample = replay.sample(500, torch.Generator().manual_seed(0))
    assert set(sample.rewards.tolist()) == {1.0, 2.0, 3.0}  # never the unwritten (NaN) row
    torch.testing.assert_close(sample.next_obs.squeeze(1), sample.rewards + 0.5)
    replay.add(transitions([4, 5, 6]))  # overwrites the two oldest
    assert len(replay) == 4
    assert replay.state_dict()["rewards"].tolist() == [3, 4, 5, 6]  # oldest first
    bigger = UniformReplay(8, (1,), np.float32, (1,), CPU)
    bigger.load_state_dict(replay.state_dict())
    assert len(bigger) == 4 and set(bigger.sample(200).rewards.tolist()) == {3, 4, 5, 6}
    replay.add(transitions([7, 8, 9, 10, 11, 12]))  # more than fits at once: the newest 4 stay
    assert replay.state_dict()["rewards"].tolist() == [9, 10, 11, 12]


def test_a_full_replay_loads_each_row_where_it_was_so_a_restored_generator_draws_the_same():
    """Loaded oldest-first from row 0, a wrapped buffer had its rows shifted, and the same
    seeded draw of row indices sampled other transitions after a resume."""
    replay = UniformReplay(5, (1,), np.float32, (1,), CPU)
    replay.add(transitions([1, 2, 3, 4, 5, 6, 7]))  # wrapped: the oldest (3) sits in row 2
    restored = UniformReplay(5, (1,), np.float32, (1,), CPU)
    restored.load_state_dict(replay.state_dict())
    assert torch.equal(restored.data["rewards"], replay.data["rewards"]) and restored.position == replay.position
    draw = replay.sample(50, torch.Generator().manual_seed(3)).rewards
    assert torch.equal(restored.sample(50, torch.Generator().manual_seed(3)).rewards, draw)
    restored.add(transitions([8]))
    replay.add(transitions([8]))
    assert torch.equal(restored.data["rewards"], replay.data["rewards"])  # the next overwrites the oldest


# ---------------------------------------------------------------------------- warm-up and UTD


def test_warmup_flag_reaches_actor_copies_through_shared_weights():
    torch.manual_seed(0)
    learner = small_sac("algo.warmup_steps=20")
    actor = SAC.make_policy(learner.spec, learner.cfg)  # what an actor process builds: the Policy alone
    weights = SharedWeights(learner.policy())
    weights.publish(learner.policy(), 0)
    weights.fetch(actor)
    obs = torch.randn(6, 3)
    actions, log_probs = actor.act(obs)
    assert actions.shape == (6, 1) and actions.abs().max() <= 1
    assert torch.all(log_probs == -math.log(2.0))  # uniform on [-1, 1]
    learner.update(rollout())  # 32 transitions: warm-up over
    assert float(learner.net.warming_up) == 0.0
    weights.publish(learner.policy(), 1)
    weights.fetch(actor)
    assert float(actor.warming_up) == 0.0
    torch.testing.assert_close(actor.obs_norm.mean, learner.net.obs_norm.mean)
    _, log_probs = actor.act(obs)
    assert not torch.any(log_probs == -math.log(2.0))  # now the tanh-Gaussian policy


def test_a_version_asked_for_exactly_after_it_was_overwritten_fails_at_once_saying_so():
    net = torch.nn.Linear(2, 1)
    weights = SharedWeights(net)
    for version in range(4):  # two buffers: versions 2 and 3 are kept
        weights.publish(net, version)
    assert weights.fetch(net, exactly=2, timeout_s=1) == 2
    with pytest.raises(RuntimeError, match="policy version 1 was overwritten .* the newest is 3"):
        weights.fetch(net, exactly=1, timeout_s=3600)  # not an hour's wait


def test_gradient_steps_follow_the_utd_ratio_of_new_valid_transitions():
    algo = small_sac("algo.warmup_steps=10", "algo.utd_ratio=2")
    autoreset = torch.zeros(8, 4, dtype=torch.bool)
    autoreset[3, 1] = autoreset[6, 2] = True
    algo.update(rollout(autoreset=autoreset))  # 30 transitions, 20 of them after the warm-up
    assert len(algo.replay) == 30 and algo.gradient_steps == 40
    algo.update(rollout(seed=1))
    assert algo.gradient_steps == 40 + 64
    fractional = small_sac("algo.warmup_steps=0", "replay.minibatch_size=2", "algo.utd_ratio=0.5")
    for expected in (1, 3, 4, 6):  # 3 transitions per update: 1.5 steps, the fraction carried over
        fractional.update(rollout(horizon=1, num_envs=3, seed=expected))
        assert fractional.gradient_steps == expected


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    algo = small_sac("replay.save_with_checkpoint=true")
    algo.update(rollout())
    saved = io.BytesIO()  # through a file, as a checkpoint goes: no tensor is shared with the original
    torch.save(algo.state_dict(), saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    restored = small_sac("replay.save_with_checkpoint=true")
    restored.load_state_dict(state)
    assert len(restored.replay) == len(algo.replay) == 32
    assert restored.reward_scaler.scale == algo.reward_scaler.scale
    torch.manual_seed(1)
    a, _ = algo.gradient_step(algo.replay.sample(8))
    torch.manual_seed(1)
    b, _ = restored.gradient_step(restored.replay.sample(8))
    for tag in a:
        torch.testing.assert_close(a[tag], b[tag], msg=tag)
    assert "replay" not in small_sac().state_dict()  # off by default


def test_a_non_finite_critic_loss_skips_that_step_and_says_so():
    torch.manual_seed(0)
    algo = small_sac()
    algo.update(rollout())
    sample = algo.replay.sample(8)
    sample.rewards[0] = float("nan")
    critic = [p.detach().clone() for p in algo.critic.parameters()]
    actor = [p.detach().clone() for p in algo.net.parameters()]
    _, skipped = algo.gradient_step(sample)
    assert skipped == 1  # the critic's; the actor's loss does not see rewards
    assert all(torch.equal(a, b) for a, b in zip(critic, algo.critic.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(actor, algo.net.parameters(), strict=True))


def test_gradient_step_updates_actor_then_temperature_then_critic_as_simbav2():
    """SimbaV2's order: the actor against the critic as it was, the temperature from that
    actor's entropy, and the critic's target from the updated actor and temperature."""
    torch.manual_seed(0)
    algo = small_sac()
    algo.update(rollout())
    calls: list[str] = []
    for name, optimizer in (("actor", algo.actor_optimizer), ("temperature", algo.alpha_optimizer),
                            ("critic", algo.critic_optimizer)):
        step = optimizer.step
        optimizer.step = lambda *a, _step=step, _name=name, **k: (calls.append(_name), _step(*a, **k))[1]
    sampled_with: list[float] = []
    sample = algo.net.sample

    def recording_sample(obs):  # the temperature at each draw of actions
        sampled_with.append(float(algo.log_alpha.detach().exp()))
        return sample(obs)

    algo.net.sample = recording_sample
    before = float(algo.log_alpha.detach().exp())
    algo.gradient_step(algo.replay.sample(8))
    assert calls == ["actor", "temperature", "critic"]
    after = float(algo.log_alpha.detach().exp())
    assert after != before
    assert sampled_with == [before, after]  # the actor's loss, then the critic's target


# ---------------------------------------------------------------------------- environments


def test_continuous_actions_are_rescaled_from_unit_range_to_the_env_bounds():
    ours = make_env(EnvConfig(id="Pendulum-v1"), num_envs=2, seed=3, num_threads=1)
    raw = make_env(EnvConfig(id="Pendulum-v1"), num_envs=2, seed=3, num_threads=1)
    try:
        space = ours.spec.action_space
        assert space.low.tolist() == [-1.0] and space.high.tolist() == [1.0] and ours.spec.max_episode_steps == 200
        ours.reset()
        raw.reset()
        for unit, torque in ((0.5, 1.0), (-1.0, -2.0), (3.0, 2.0)):  # Pendulum's torque lies in [-2, 2]
            result = ours.step(np.full((2, 1), unit, np.float32))
            obs, reward, *_ = raw._env.step(np.full((2, 1), torque, np.float32))
            np.testing.assert_allclose(result.obs, obs, rtol=1e-6)
            np.testing.assert_allclose(result.reward, reward, rtol=1e-6)
    finally:
        ours.close()
        raw.close()


def test_sac_rejects_discrete_actions_and_simbav2_needs_sac():
    cfg = build_config("simbav2_pendulum", {"env.id": "CartPole-v1"})
    with pytest.raises(ConfigError, match="continuous"):
        check_fit(cfg, env_spec(cfg.env))
    with pytest.raises(ConfigError, match="simbav2"):
        build_config("paac_classic", overrides=["model.encoder=simbav2"])


# ---------------------------------------------------------------------------- CLI and learning


def cli(*args):
    return subprocess.run([sys.executable, "-m", "parallel_rl.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a real run of minutes' worth on busy cores
def test_short_halfcheetah_run_writes_tensorboard_checkpoint_and_evaluates(tmp_path):
    run = tmp_path / "cheetah"
    out = cli("launch", "--config", "simbav2_mujoco", "--env", "HalfCheetah-v5", "--actors", "4", "--actor-procs", "1",
              "--steps", "960", "--run-dir", str(run), "--set", "env.max_episode_steps=100",
              "--set", "algo.warmup_steps=320", "--set", "algo.utd_ratio=0.25", "--set", "model.width=32",
              "--set", "model.critic_width=64", "--set", "replay.capacity=2000", "--set", "replay.minibatch_size=32",
              "--set", "replay.save_with_checkpoint=true", "--set", "logging.interval_s=0", "--set", "torch_threads=1")
    assert out.returncode == 0, out.stderr
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("charts/episodic_return", "losses/value", "losses/policy", "diag/temperature", "diag/reward_scale",
                "diag/replay_size", "charts/learning_rate"):
        assert tag in tags, tag
    assert all(math.isfinite(e.value) for e in acc.Scalars("losses/value"))
    state = ckpt.load(ckpt.latest(run / "checkpoints"))
    seen = state["algo"]["transitions_seen"]
    # 960 agent steps less one auto-reset step per finished 100-step episode (two per env)
    assert state["step"] == 960 and 960 - 4 * 3 <= seen < 960
    assert len(state["algo"]["replay"]["rewards"]) == seen
    assert state["algo"]["gradient_steps"] == int(0.25 * (seen - 320))
    evaluation = cli("eval", str(run), "--episodes", "2", "--greedy")
    assert evaluation.returncode == 0, evaluation.stderr
    assert "mean return" in evaluation.stdout and "over 2 episodes" in evaluation.stdout


def test_sac_on_a_discrete_env_exits_2_with_a_message(tmp_path):
    out = cli("launch", "--config", "simbav2_pendulum", "--env", "CartPole-v1", "--run-dir", str(tmp_path / "x"))
    assert out.returncode == 2
    assert "continuous" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
@pytest.mark.learning
def test_simbav2_learns_pendulum(tmp_path):
    cfg = build_config("simbav2_pendulum", {"seed": 1}, ["logging.console=false"])
    summary = Runner(cfg, tmp_path / "run").run()
    assert summary.final_step == cfg.total_steps
    # mean over the last 10 episodes (logging.return_window); random play scores about -1200
    assert summary.recent_return >= -250, summary


def test_a_delivery_splits_into_pieces_that_continue_each_other():
    whole = rollout(horizon=5, num_envs=2)
    delivery = Delivery(whole, returns=[1.0], lengths=[3], timings={"step": 0.5}, lag=[2], producers=[7])
    pieces = delivery.split(2)
    assert [p.batch.horizon for p in pieces] == [2, 2, 1]
    assert torch.equal(pieces[0].batch.next_obs, whole.obs[2]) and torch.equal(pieces[1].batch.next_obs, whole.obs[4])
    assert torch.equal(pieces[2].batch.next_obs, whole.next_obs)
    assert torch.equal(torch.cat([p.batch.rewards for p in pieces]), whole.rewards)
    assert (pieces[0].returns, pieces[0].producers) == ([1.0], [7])
    assert all(not p.returns and not p.producers and not p.timings for p in pieces[1:])  # reported once, not three times
    # the weights are published after each piece: each is learned one version later than the last
    assert [p.lag for p in pieces] == [[2], [3], [4]]
    assert delivery.split(5) == [delivery]


def test_the_learner_cuts_deliveries_where_its_source_says_not_where_the_whole_runs_config_does():
    """With several ranks the config counts the envs of all of them, so its segment is shorter
    than a rank's: the learner must cut where this rank's acting expects the versions to
    change (the source's ``segment_length``), or a deterministic-lag actor waits for a version
    long overwritten."""
    from parallel_rl.runtime.learner import learn

    cfg = build_config("simbav2_pendulum", {"total_steps": 40, "actors.num_envs": 8}, [  # the whole run: 2 ranks x 4 envs
        "algo.utd_ratio=1", "algo.publish_interval=8", "algo.rollout_length=4", "algo.warmup_steps=8"])
    assert cfg.algo.segment_length(cfg.actors.num_envs) == 1

    class Source:
        segment_length = cfg.algo.segment_length(4)  # this rank's 4 envs: 2
        published_versions: list[int] = []

        def next_batch(self, version, should_stop):
            return Delivery(rollout(horizon=4, num_envs=4))

        def published(self, version):
            self.published_versions.append(version)

    class Counting:
        def set_progress(self, fraction):
            return 1e-3

        def update(self, batch):
            return UpdateResult()

    records = list(learn(Counting(), Source(), cfg, step=0, updates=0, should_stop=lambda: False))
    assert Source.segment_length == 2 and [r.delivery.batch.horizon for r in records] == [2] * 5
    assert Source.published_versions == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("procs, deterministic_lag", [(0, False), (1, False), (1, True)])
def test_replay_learning_publishes_every_publish_interval_gradient_steps(tmp_path, procs, deterministic_lag):
    """Acting sees new weights after about ``publish_interval`` gradient steps, not after every
    gradient step a whole rollout owes: inline, by collecting fewer steps between updates; with
    an actor process, by learning a delivered rollout in pieces and publishing after each."""
    cfg = build_config("simbav2_pendulum", {"total_steps": 320, "actors.procs": procs, "actors.deterministic_lag": deterministic_lag}, [
        "algo.warmup_steps=0", "algo.utd_ratio=1", "algo.publish_interval=8", "algo.rollout_length=8",
        "model.width=16", "model.critic_width=32", "replay.minibatch_size=8", "logging.console=false"])
    assert cfg.algo.segment_length(cfg.actors.num_envs) == 2  # 8 gradient steps = 2 agent steps of 4 envs
    seen = []

    class Recording(SAC):
        def update(self, batch):
            before = self.gradient_steps
            result = super().update(batch)
            seen.append((batch.horizon, self.gradient_steps - before))
            return result

    summary = Runner(cfg, tmp_path / "run", write_logs=False, algorithm=Recording).run()
    assert summary.final_step == 320 and summary.updates == len(seen) == 40
    assert all(pair == (2, 8) for pair in seen)
