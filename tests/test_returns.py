"""n-step returns against hand-computed values."""

import torch

from parallel_rl.algos.returns import n_step_returns

F, T_ = False, True


def _returns(rewards, values, bootstrap, terminated, truncated, gamma=0.5):
    col = lambda xs, dtype=torch.float32: torch.tensor(xs, dtype=dtype).unsqueeze(1)  # noqa: E731
    return n_step_returns(
        col(rewards), col(values), torch.tensor([bootstrap], dtype=torch.float32),
        col(terminated, torch.bool), col(truncated, torch.bool), gamma,
    ).squeeze(1).tolist()


def test_plain_bootstrap():
    # R2 = 3 + .5*8 = 7, R1 = 2 + .5*7 = 5.5, R0 = 1 + .5*5.5 = 3.75
    assert _returns([1, 2, 3], [0, 0, 0], 8.0, [F, F, F], [F, F, F]) == [3.75, 5.5, 7.0]


def test_termination_cuts_the_sum():
    # terminated at t=1: R1 = 2, R0 = 1 + .5*2 = 2; t=2 is the auto-reset step: R2 = 3 + .5*8 = 7
    assert _returns([1, 2, 3], [0, 0, 0], 8.0, [F, T_, F], [F, F, F]) == [2.0, 2.0, 7.0]


def test_truncation_bootstraps_from_the_final_observation():
    # truncated at t=1: R1 = 2 + .5*V(s2) = 2 + .5*10 = 7, R0 = 1 + .5*7 = 4.5, R2 = 3 + .5*8 = 7
    assert _returns([1, 2, 3], [0, 0, 10], 8.0, [F, T_, F], [F, F, F]) != _returns([1, 2, 3], [0, 0, 10], 8.0, [F, F, F], [F, T_, F])
    assert _returns([1, 2, 3], [0, 0, 10], 8.0, [F, F, F], [F, T_, F]) == [4.5, 7.0, 7.0]


def test_truncation_on_last_step_uses_bootstrap_value():
    assert _returns([1, 1], [0, 0], 4.0, [F, F], [F, T_]) == [1 + 0.5 * 3, 3.0]


def test_termination_wins_over_truncation():
    assert _returns([1, 1], [0, 0], 4.0, [F, T_], [F, T_]) == [1.5, 1.0]


def test_batched_envs_are_independent():
    rewards = torch.ones(3, 2)
    values = torch.zeros(3, 2)
    term = torch.tensor([[F, F], [F, T_], [F, F]])
    trunc = torch.zeros(3, 2, dtype=torch.bool)
    out = n_step_returns(rewards, values, torch.tensor([0.0, 0.0]), term, trunc, 1.0)
    assert out[:, 0].tolist() == [3.0, 2.0, 1.0]
    assert out[:, 1].tolist() == [2.0, 1.0, 1.0]
