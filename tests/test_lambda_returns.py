"""GAE and lambda-returns against hand-computed values (gamma = lambda = 0.5)."""

import pytest
import torch

from parallel_rl.algos.returns import gae, lambda_returns, n_step_returns

F, T_ = False, True
VALUES = [1.0, 2.0, 4.0]  # V(s_0), V(s_1), V(s_2); V(s_3) = bootstrap 8


def col(xs, dtype=torch.float32):
    return torch.tensor(xs, dtype=dtype).unsqueeze(1)


def _gae(terminated, truncated, rewards=(1.0, 2.0, 3.0), values=VALUES, bootstrap=8.0):
    adv, ret = gae(col(rewards), col(values), torch.tensor([bootstrap]), col(terminated, torch.bool),
                   col(truncated, torch.bool), 0.5, 0.5)
    return adv.squeeze(1).tolist(), ret.squeeze(1).tolist()


def _lambda(terminated, truncated, rewards=(1.0, 2.0, 3.0), values=VALUES, bootstrap=8.0, lam=0.5):
    return lambda_returns(col(rewards), col(values), torch.tensor([bootstrap]), col(terminated, torch.bool),
                          col(truncated, torch.bool), 0.5, lam).squeeze(1).tolist()


def test_gae_inside_one_episode():
    # deltas: 1 + .5*2 - 1 = 1, 2 + .5*4 - 2 = 2, 3 + .5*8 - 4 = 3
    # A2 = 3, A1 = 2 + .25*3 = 2.75, A0 = 1 + .25*2.75 = 1.6875; returns = A + V
    assert _gae([F, F, F], [F, F, F]) == ([1.6875, 2.75, 3.0], [2.6875, 4.75, 7.0])


def test_gae_termination_stops_the_sum_and_the_bootstrap():
    # terminated at t=1: delta1 = 2 - 2 = 0 and A1 = 0 (nothing after it); A0 = 1 + .25*0 = 1
    # t=2 is the auto-reset step: junk the caller masks, and it does not leak into t=1
    assert _gae([F, T_, F], [F, F, F]) == ([1.0, 0.0, 3.0], [2.0, 2.0, 7.0])


def test_gae_truncation_bootstraps_from_the_final_observation():
    # truncated at t=1: delta1 = 2 + .5*V(s_2 = final obs) - 2 = 2, A1 = 2 (trace cut), A0 = 1 + .25*2 = 1.5
    assert _gae([F, F, F], [F, T_, F]) == ([1.5, 2.0, 3.0], [2.5, 4.0, 7.0])


def test_gae_at_the_last_step_truncation_bootstraps_and_termination_does_not():
    assert _gae([F, F, F], [F, F, T_]) == _gae([F, F, F], [F, F, F])
    # terminated at t=2: delta2 = 3 - 4 = -1, A1 = 2 + .25*-1 = 1.75, A0 = 1 + .25*1.75 = 1.4375
    assert _gae([F, F, T_], [F, F, F]) == ([1.4375, 1.75, -1.0], [2.4375, 3.75, 3.0])


def test_lambda_returns_by_hand():
    # G2 = 3 + .5*8 = 7, G1 = 2 + .5*(.5*4 + .5*7) = 4.75, G0 = 1 + .5*(.5*2 + .5*4.75) = 2.6875
    assert _lambda([F, F, F], [F, F, F]) == [2.6875, 4.75, 7.0]
    # termination at t=1: G1 = 2, G0 = 1 + .5*(.5*2 + .5*2) = 2
    assert _lambda([F, T_, F], [F, F, F]) == [2.0, 2.0, 7.0]
    # truncation at t=1: G1 = 2 + .5*V(final obs) = 4, G0 = 1 + .5*(.5*2 + .5*4) = 2.5
    assert _lambda([F, F, F], [F, T_, F]) == [2.5, 4.0, 7.0]
    # termination wins when both flags are set
    assert _lambda([F, T_, F], [F, T_, F]) == [2.0, 2.0, 7.0]


def test_q_lambda_with_max_q_values():
    # PQN passes max_a Q(s_t, a) as values; gamma .5, lambda .65, two envs side by side:
    # env 0 runs on: G1 = 1 + .5*10 = 6, G0 = 0 + .5*(.35*4 + .65*6) = 2.65
    # env 1 terminates at t=0: G0 = 1; t=1 is its auto-reset step: G1 = 0 + .5*10 = 5
    rewards = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    max_q = torch.tensor([[3.0, 3.0], [4.0, 4.0]])
    terminated = torch.tensor([[F, T_], [F, F]])
    truncated = torch.zeros(2, 2, dtype=torch.bool)
    out = lambda_returns(rewards, max_q, torch.tensor([10.0, 10.0]), terminated, truncated, 0.5, 0.65)
    torch.testing.assert_close(out, torch.tensor([[2.65, 1.0], [6.0, 5.0]]))


def _random_rollout(seed, horizon=7, envs=5):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(horizon, envs, generator=g)
    values = torch.randn(horizon, envs, generator=g)
    bootstrap = torch.randn(envs, generator=g)
    terminated = torch.rand(horizon, envs, generator=g) < 0.2
    truncated = torch.rand(horizon, envs, generator=g) < 0.2
    return rewards, values, bootstrap, terminated, truncated


@pytest.mark.parametrize("seed", range(5))
def test_limits_and_identities(seed):
    rewards, values, bootstrap, terminated, truncated = _random_rollout(seed)
    args = (rewards, values, bootstrap, terminated, truncated, 0.9)
    # lambda = 1 is the n-step return, lambda = 0 the one-step TD target
    torch.testing.assert_close(lambda_returns(*args, 1.0), n_step_returns(*args))
    next_values = torch.cat([values[1:], bootstrap.unsqueeze(0)]) * (~terminated)
    torch.testing.assert_close(lambda_returns(*args, 0.0), rewards + 0.9 * next_values)
    # GAE's returns are the lambda-returns of V
    advantages, returns = gae(*args, 0.7)
    torch.testing.assert_close(returns, lambda_returns(*args, 0.7))
    torch.testing.assert_close(advantages, returns - values)
