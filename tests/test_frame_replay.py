"""The frame replay: n-step targets across episode ends, stacks rebuilt exactly as EnvPool
stacked them, breaks in a stream, prioritized sampling, and the memory it reports."""

import numpy as np
import pytest
import torch

from parallel_rl.algos.policies import UniformPolicy
from parallel_rl.config import build_config
from parallel_rl.envs import make_env_groups
from parallel_rl.replay.frames import SAMPLEABLE, FrameReplay, n_step_targets
from parallel_rl.runtime.rollout import NetworkPolicy, RolloutCollector, allocate

F, T_ = False, True
CPU = torch.device("cpu")


def _targets(rewards, terminated, truncated, gamma=0.5):
    returns, steps, discounts = n_step_targets(
        torch.tensor([rewards], dtype=torch.float32), torch.tensor([terminated]), torch.tensor([truncated]), gamma)
    return returns.item(), steps.item(), discounts.item()


def test_n_step_targets_hand_computed():
    # 1 + .5 * 2 + .25 * 3 = 2.75, bootstrapped 3 rows on with .5^3
    assert _targets([1, 2, 3], [F, F, F], [F, F, F]) == (2.75, 3, 0.125)
    # termination at the second row: 1 + .5 * 2, no bootstrap; the third reward is the next episode's
    assert _targets([1, 2, 3], [F, T_, F], [F, F, F]) == (2.0, 2, 0.0)
    # truncation at the first row: 1, bootstrapped from the final observation one row on
    assert _targets([1, 2, 3], [F, F, F], [T_, F, F]) == (1.0, 1, 0.5)
    # both flags: termination wins
    assert _targets([1, 2, 3], [T_, F, F], [T_, F, F]) == (1.0, 1, 0.0)


def _rollout(obs_values, rewards, terminated, truncated, autoreset, next_value):
    """A one-env rollout of vector observations [value] (the value names the row)."""
    col = lambda xs, dtype: torch.tensor(xs, dtype=dtype).view(-1, 1)  # noqa: E731
    return dict(
        obs=torch.tensor(obs_values, dtype=torch.float32).view(-1, 1, 1),
        actions=torch.arange(len(obs_values)).view(-1, 1),
        rewards=col(rewards, torch.float32),
        terminated=col(terminated, torch.bool),
        truncated=col(truncated, torch.bool),
        autoreset=col(autoreset, torch.bool),
        next_obs=torch.tensor([[next_value]], dtype=torch.float32),
    )


def _vector_replay(capacity=64, n_step=3, prioritized=False, num_envs=1):
    return FrameReplay((1,), np.float32, 1, num_envs, capacity, n_step, 0.5, CPU, prioritized=prioritized, seed=0)


def _all_sampleable(replay):
    first, last = replay._sample_window()
    rows = replay.logical_rows(torch.arange(first, last + 1))
    keep = (replay.data["flags"][rows, 0] & SAMPLEABLE) != 0
    return rows[keep]


def test_n_step_targets_across_episode_ends_in_the_replay():
    replay = _vector_replay()
    # rows: 0 1 2 | 3 = final obs (auto-reset row) | 4 5 (truncated) | 6 = final obs | 7 8 9 ...
    replay.add(**_rollout(
        list(range(10)), [1, 2, 3, 0, 4, 5, 0, 6, 7, 8],
        [F, F, T_, F, F, F, F, F, F, F], [F, F, F, F, F, T_, F, F, F, F], [F, F, F, T_, F, F, T_, F, F, F], 10.0))
    replay.add(**_rollout(list(range(10, 20)), [1] * 10, [F] * 10, [F] * 10, [F] * 10, 20.0))
    rows = _all_sampleable(replay)
    got = replay.gather(rows, torch.zeros_like(rows))
    table = {int(o): (r, d, int(n)) for o, r, d, n in zip(got.obs.flatten().tolist(), got.returns.tolist(),
                                                           got.discounts.tolist(), got.next_obs.flatten().tolist(), strict=True)}
    assert 3 not in table and 6 not in table  # final observations are not transitions
    assert table[0] == (2.75, 0.0, 3)  # 1 + .5*2 + .25*3, terminated: no bootstrap
    assert table[1] == (3.5, 0.0, 3)
    assert table[2] == (3.0, 0.0, 3)
    assert table[4] == (6.5, 0.25, 6)  # 4 + .5*5, truncated: bootstrap from the final observation
    assert table[5] == (5.0, 0.5, 6)
    assert table[7] == (11.5, 0.125, 10)  # 6 + .5*7 + .25*8 across the rollout boundary
    assert table[8] == (11.25, 0.125, 11)
    assert max(table) == 16  # the last n_step rows wait for their successors
    assert got.actions.tolist() == [int(o) % 10 for o in got.obs.flatten().tolist()]
    for _ in range(20):  # sampling never returns a final observation either
        assert not set(replay.sample(32).obs.flatten().tolist()) & {3.0, 6.0}


def test_a_break_in_the_stream_truncates_before_it():
    replay = _vector_replay()
    replay.add(**_rollout([0, 1, 2, 3], [1, 1, 1, 1], [F] * 4, [F] * 4, [F] * 4, 4.0))
    # the next rollout does not continue from observation 4 (a rollout was dropped)
    replay.add(**_rollout([50, 51, 52, 53, 54, 55], [1] * 6, [F] * 6, [F] * 6, [F] * 6, 56.0))
    assert replay.breaks == 1
    rows = _all_sampleable(replay)
    got = replay.gather(rows, torch.zeros_like(rows))
    table = {int(o): (r, d, int(n)) for o, r, d, n in zip(got.obs.flatten().tolist(), got.returns.tolist(),
                                                           got.discounts.tolist(), got.next_obs.flatten().tolist(), strict=True)}
    assert 3 not in table  # its successor is unknown
    assert table[2] == (1.0, 0.5, 3)  # cut short, bootstrapped from the last row before the break
    assert table[1] == (1.5, 0.25, 3)
    assert table[50] == (1.75, 0.125, 53)


def _atari_stream(env_id, num_envs, horizon, rollouts, **env_overrides):
    """Rollouts of a random policy through the runtime's collector, with every observation kept."""
    overrides = [f"env.id={env_id}", "actors.env_groups=2"] + [f"env.{k}={v}" for k, v in env_overrides.items()]
    cfg = build_config("qrdqn_atari", {}, overrides)
    groups = make_env_groups(cfg.env, num_envs, 3, 1, cfg.actors.env_groups)
    collector = RolloutCollector(groups, horizon)
    policy = NetworkPolicy(UniformPolicy(groups[0].spec), torch.device("cpu"), 0, num_envs)
    try:
        out = []
        for _ in range(rollouts):
            arrays = collector.collect(policy, allocate(groups[0].spec, horizon, num_envs))
            out.append({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
        return out
    finally:
        collector.close()


@pytest.mark.parametrize("env_id, overrides, life_loss_continues_stack", [
    ("Pong-v5", {"max_episode_steps": 20}, False),  # a reset refills the stack with its first frame
    ("Breakout-v5", {"episodic_life": "true", "max_episode_steps": 200}, True),  # a lost life continues the stack
    # ALE zero-fills a new game's stack, and plays on after a life lost: the backend makes both EnvPool's
    ("Pong-v5", {"max_episode_steps": 20, "backend": "ale"}, False),
    ("Breakout-v5", {"episodic_life": "true", "fire_reset": "true", "max_episode_steps": 200, "backend": "ale"}, True),
])
def test_stacks_are_rebuilt_exactly_as_envpool_stacked_them(env_id, overrides, life_loss_continues_stack):
    num_envs, horizon, rollouts, rows, n_step = 4, 16, 12, 50, 3  # 192 steps per env into 50 rows: the ring wraps
    stream = _atari_stream(env_id, num_envs, horizon, rollouts, **overrides)
    truth = torch.cat([r["obs"] for r in stream])  # every step's observation: [steps, envs, 4, 84, 84]
    ends = torch.cat([r["terminated"] | r["truncated"] for r in stream])
    after_reset = torch.cat([r["autoreset"] for r in stream])
    first_obs = truth[1:][after_reset[:-1]]  # observations that begin an episode
    repeated = (first_obs[:, :-1] == first_obs[:, -1:]).flatten(1).all(1)
    assert len(first_obs) >= num_envs, "too few episode ends to test across them"
    assert bool((~repeated).any()) == life_loss_continues_stack
    replay = FrameReplay((4, 84, 84), np.uint8, 4, num_envs, rows * num_envs, n_step, 0.99, CPU)
    for r, rollout in enumerate(stream):
        replay.add(**{k: rollout[k] for k in ("obs", "actions", "rewards", "terminated", "truncated", "autoreset", "next_obs")})
        written = (r + 1) * horizon
        logical = torch.arange(replay.frame_stack - 1, replay.size)  # rows whose whole stack is stored
        steps = written - replay.size + logical
        for env in range(num_envs):
            envs = torch.full_like(logical, env)
            assert torch.equal(replay.stacked_obs(replay.logical_rows(logical), envs), truth[steps, env]), f"rollout {r}, env {env}"
            # n-step transitions from the sampleable rows bootstrap from the env's own observation
            first, last = replay._sample_window()
            window = torch.arange(first, last + 1)
            rows_ = replay.logical_rows(window)
            keep = (replay.data["flags"][rows_, env] & SAMPLEABLE) != 0
            got = replay.gather(rows_[keep], torch.full_like(rows_[keep], env))
            for step, next_obs in zip((written - replay.size + window[keep]).tolist(), got.next_obs, strict=True):
                ahead = 1
                while ahead < n_step and not ends[step + ahead - 1, env]:
                    ahead += 1
                assert torch.equal(next_obs, truth[step + ahead, env])
    assert replay.breaks == 0


def test_prioritized_sampling_follows_priorities_and_skips_final_observations():
    replay = _vector_replay(capacity=64, n_step=1, prioritized=True)
    replay.add(**_rollout(list(range(12)), [0] * 12, [F, F, F, T_] + [F] * 8, [F] * 12, [F, F, F, F, T_] + [F] * 7, 12.0))
    rows = _all_sampleable(replay)  # rows 0..10 but the final observation (row 4)
    assert sorted(replay.gather(rows, torch.zeros_like(rows)).obs.flatten().int().tolist()) == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]
    tree = replay.data["priority_tree"]
    assert float(tree[1]) == pytest.approx(10.0)  # every sampleable row at the initial priority 1
    # row 7 gets (loss + 1e-6)^0.5 = 3: 3 / (9 + 3) of the mass
    replay.update_priorities(torch.tensor([7]), torch.tensor([9.0 - 1e-6]))
    assert float(tree[1]) == pytest.approx(12.0)
    draws = torch.cat([replay.sample(64).obs.flatten() for _ in range(200)])
    assert 4.0 not in draws.tolist() and 11.0 not in draws.tolist()
    assert float((draws == 7).float().mean()) == pytest.approx(0.25, abs=0.03)
    # importance weights (P / P_min)^-0.5: the row drawn 3x as often weighs 1/sqrt(3), the others 1
    sample = replay.sample(64)
    assert torch.allclose(sample.weights, torch.where(sample.obs.flatten() == 7, 3.0 ** -0.5, 1.0))


def test_uniform_sampling_is_uniform_over_sampleable_rows_without_asking_the_device(no_host_syncs):
    """Episodes of one step: every other row is a final observation, the most a stream holds.
    Drawn at every gradient step, so sampling must not wait for a GPU (a boolean mask or a
    count read back would, each time)."""
    replay = _vector_replay(capacity=64, n_step=1, num_envs=2)
    ends = [F, T_] * 8  # rows 1, 3, 5, ...: auto-reset rows
    one_env = _rollout(list(range(16)), [1] * 16, [T_, F] * 8, [F] * 16, ends, 16.0)
    replay.add(**{key: torch.cat([value] * 2, dim=0 if key == "next_obs" else 1) for key, value in one_env.items()})
    assert replay.can_sample()
    with no_host_syncs():
        samples = [replay.sample(8) for _ in range(2000)]
    draws = torch.cat([sample.obs.flatten() for sample in samples])
    assert torch.equal(torch.cat([sample.weights for sample in samples]), torch.ones(len(draws)))
    counts = torch.bincount(draws.long(), minlength=16)
    assert counts[1::2].sum() == 0  # never a final observation
    sampleable = counts[0:15:2]  # rows 0, 2, ..., 14 (row 15 waits for its successor), 2,000 draws each expected
    assert sampleable.sum() == len(draws) and (sampleable - 2000).abs().max() < 250, counts


def test_a_window_with_nothing_sampleable_gives_weightless_draws():
    replay = _vector_replay(capacity=64, n_step=1)
    replay.add(**_rollout([0, 1], [1, 1], [F, F], [F, F], [T_, F], 2.0))  # the one row in the window is a final observation
    sample = replay.sample(8)
    assert torch.equal(sample.weights, torch.zeros(8))


def test_a_prioritized_replay_of_stacked_frames_fills_from_empty_in_short_rollouts():
    """Until it holds a whole stack and an n-step window no row is complete: the first
    rollouts (Atari's 4 x 1 steps here) must add nothing to the tree, then rows enter it."""
    replay = FrameReplay((4, 1), np.float32, 4, 1, 64, 3, 0.5, CPU, prioritized=True, seed=0)

    def step(value):  # one step of one env whose stacks hold the last four values
        stacked = lambda v: torch.tensor([v - 3, v - 2, v - 1, v], dtype=torch.float32).view(1, 1, 4, 1)  # noqa: E731
        return {**_rollout([value], [0], [F], [F], [F], value + 1.0), "obs": stacked(value), "next_obs": stacked(value + 1)[0]}

    filled = []
    for value in range(10):
        replay.add(**step(float(value)))
        filled.append(float(replay.data["priority_tree"][1]))
    assert filled[0] == 0.0 and filled[-1] > 0 and replay.can_sample()
    assert filled == sorted(filled)  # rows enter one per step once the first is complete



def test_prioritized_replay_asks_nothing_of_the_device_and_keeps_every_sum(no_host_syncs):
    """Adding, sampling and updating priorities run without a host sync (``torch.unique``, a
    tensor read as a Python number: each waits for a GPU), and every inner node of the tree
    stays the sum of its children, rows drawn twice in one update included."""
    replay = _vector_replay(capacity=64, n_step=2, prioritized=True, num_envs=3)
    tree = replay.data["priority_tree"]
    one_env = _rollout(list(range(8)), [1] * 8, [F] * 8, [F] * 8, [F] * 8, 8.0)
    rollout = {key: torch.cat([value] * 3, dim=0 if key == "next_obs" else 1) for key, value in one_env.items()}
    replay.add(**rollout)
    assert replay.can_sample()  # once per update: the only read of the tree
    with no_host_syncs():
        replay.add(**rollout)
        sample = replay.sample(6)
        twice = torch.cat([sample.index[:3], sample.index[:3]])  # each of three rows drawn twice
        replay.update_priorities(twice, torch.arange(6, dtype=torch.float32) * 4)
        replay.add(**rollout)
    inner = torch.arange(1, replay.leaves)
    assert torch.equal(tree[inner], tree[2 * inner] + tree[2 * inner + 1])
    assert torch.equal(replay.max_priority, (torch.tensor(20.0, dtype=torch.float64) + 1e-6).pow(0.5))

def test_overwritten_rows_leave_the_priority_tree():
    replay = _vector_replay(capacity=8, n_step=1, prioritized=True)
    for start in range(0, 40, 4):
        replay.add(**_rollout(list(range(start, start + 4)), [0] * 4, [F] * 4, [F] * 4, [F] * 4, float(start + 4)))
    # 8 rows stored, the newest (waiting for its successor) not yet sampleable
    assert float(replay.data["priority_tree"][1]) == pytest.approx(7.0)
    assert set(torch.cat([replay.sample(16).obs.flatten() for _ in range(20)]).int().tolist()) == set(range(32, 39))


def test_memory_per_atari_transition_is_one_frame():
    args = dict(obs_shape=(4, 84, 84), obs_dtype=np.uint8, frame_stack=4)
    small = FrameReplay(**args, num_envs=4, capacity=4000, n_step=3, gamma=0.99, device=CPU, prioritized=True)
    assert small.nbytes == FrameReplay.planned_bytes(**args, capacity=4000, num_envs=4, prioritized=True)
    uniform = FrameReplay.planned_bytes(**args, capacity=1_000_000, num_envs=32)
    prioritized = FrameReplay.planned_bytes(**args, capacity=1_000_000, num_envs=32, prioritized=True)
    # one 84x84 frame, an int32 action, a float32 reward and a flags byte per agent step
    assert uniform == 1_000_000 * (84 * 84 + 4 + 4 + 1)
    assert prioritized - uniform == 2 * 2**20 * 8  # the sum tree over 2^20 leaves, float64
    assert prioritized <= 7.5e9
