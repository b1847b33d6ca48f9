"""V-trace against an independent float reference, n-step returns, and a hand-worked case."""

import math

import pytest
import torch

from parallel_rl.algos.returns import n_step_returns, vtrace

F, T_ = False, True
T, N = 7, 5


def _reference(mu_lp, pi_lp, rewards, values, bootstrap, terminated, truncated, gamma, rho_bar, c_bar):
    """Textbook V-trace per env as a forward sum, in plain floats.

    vs_s = V(x_s) + sum_{t=s}^{e} gamma^{t-s} (prod_{i=s}^{t-1} c_i) delta_t, where e is the
    end of s's episode inside the rollout (its terminated/truncated step, else T-1).
    """
    horizon, n_envs = len(rewards), len(rewards[0])
    vs = [[0.0] * n_envs for _ in range(horizon)]
    adv = [[0.0] * n_envs for _ in range(horizon)]
    for n in range(n_envs):
        rho, c, v_next, ended = [], [], [], []
        for t in range(horizon):
            ratio = math.exp(pi_lp[t][n] - mu_lp[t][n])
            rho.append(min(rho_bar, ratio))
            c.append(min(c_bar, ratio))
            after = values[t + 1][n] if t + 1 < horizon else bootstrap[n]
            v_next.append(0.0 if terminated[t][n] else after)
            ended.append(terminated[t][n] or truncated[t][n])
        delta = [rho[t] * (rewards[t][n] + gamma * v_next[t] - values[t][n]) for t in range(horizon)]
        for s in range(horizon):
            total, weight, t = 0.0, 1.0, s
            while True:
                total += weight * delta[t]
                if ended[t] or t == horizon - 1:
                    break
                weight *= gamma * c[t]
                t += 1
            vs[s][n] = values[s][n] + total
        for s in range(horizon):
            if ended[s]:
                target = v_next[s]
            elif s == horizon - 1:
                target = bootstrap[n]
            else:
                target = vs[s + 1][n]
            adv[s][n] = rho[s] * (rewards[s][n] + gamma * target - values[s][n])
    return vs, adv


def _random_rollout(seed, log_ratio_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    mu_lp = -torch.rand(T, N, generator=g, dtype=torch.float64) * 3
    # Spread log ratios over about [-2, 2] so many ratios exceed rho_bar / c_bar.
    pi_lp = mu_lp + torch.randn(T, N, generator=g, dtype=torch.float64) * log_ratio_scale
    rewards = torch.randn(T, N, generator=g, dtype=torch.float64)
    values = torch.randn(T, N, generator=g, dtype=torch.float64)
    bootstrap = torch.randn(N, generator=g, dtype=torch.float64)
    terminated = torch.rand(T, N, generator=g) < 0.2
    truncated = torch.rand(T, N, generator=g) < 0.2  # sometimes both: termination wins
    return mu_lp, pi_lp, rewards, values, bootstrap, terminated, truncated


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rho_bar,c_bar", [(1.0, 1.0), (2.0, 0.5), (0.7, 1.5)])
def test_matches_float_reference(seed, rho_bar, c_bar):
    mu_lp, pi_lp, rewards, values, bootstrap, term, trunc = _random_rollout(seed)
    assert (pi_lp - mu_lp).exp().max() > max(rho_bar, c_bar)  # clipping is exercised
    gamma = 0.9
    vs, adv = vtrace(mu_lp, pi_lp, rewards, values, bootstrap, term, trunc, gamma, rho_bar, c_bar)
    ref_vs, ref_adv = _reference(
        mu_lp.tolist(), pi_lp.tolist(), rewards.tolist(), values.tolist(), bootstrap.tolist(),
        term.tolist(), trunc.tolist(), gamma, rho_bar, c_bar,
    )
    torch.testing.assert_close(vs, torch.tensor(ref_vs, dtype=torch.float64))
    torch.testing.assert_close(adv, torch.tensor(ref_adv, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(6))
def test_on_policy_equals_n_step_returns(seed):
    # With rho = c = 1: vs_t = r_t + gamma * V_next_t + gamma * [no end] (vs_{t+1} - V_{t+1})
    #   = r_t + gamma * vs_{t+1} inside an episode, r_t after a termination,
    #   r_t + gamma * values[t+1] after a truncation, r_t + gamma * bootstrap at T-1,
    # which is exactly the n-step recursion; and adv_t = r_t + gamma * vs_next_t - V_t = vs_t - V_t.
    _, lp, rewards, values, bootstrap, term, trunc = _random_rollout(seed)
    assert term.any() and trunc.any()
    vs, adv = vtrace(lp, lp, rewards, values, bootstrap, term, trunc, 0.9)
    returns = n_step_returns(rewards, values, bootstrap, term, trunc, 0.9)
    torch.testing.assert_close(vs, returns)
    torch.testing.assert_close(adv, returns - values)


def _col(xs, dtype=torch.float64):
    return torch.tensor(xs, dtype=dtype).unsqueeze(1)


def _hand(terminated, truncated):
    # gamma = .5, V = [1, 2], bootstrap 4, r = [1, 1], ratios pi/mu = [.5, 2] -> rho = c = [.5, 1]
    vs, adv = vtrace(
        _col([0.0, 0.0]), _col([math.log(0.5), math.log(2.0)]), _col([1.0, 1.0]),
        _col([1.0, 2.0]), torch.tensor([4.0], dtype=torch.float64),
        _col(terminated, torch.bool), _col(truncated, torch.bool), 0.5,
    )
    return vs.squeeze(1).tolist(), adv.squeeze(1).tolist()


def test_hand_computed_t2():
    # t=1: delta1 = 1 * (1 + .5*4 - 2) = 1 -> vs1 = 2 + 1 = 3; adv1 = 1 * (1 + .5*4 - 2) = 1
    # t=0: delta0 = .5 * (1 + .5*2 - 1) = .5 -> vs0 = 1 + .5 + .5*.5*(vs1 - V1 = 1) = 1.75
    #      adv0 = .5 * (1 + .5*vs1 - 1) = .5 * 1.5 = .75
    vs, adv = _hand([F, F], [F, F])
    assert vs == pytest.approx([1.75, 3.0])
    assert adv == pytest.approx([0.75, 1.0])


def test_hand_computed_t2_episode_ends():
    # truncated at t=0: V_next0 = V(final obs) = values[1] = 2, trace cut:
    #   vs0 = 1 + .5 * (1 + .5*2 - 1) = 1.5, adv0 = .5 * (1 + .5*2 - 1) = .5; t=1 unchanged
    vs, adv = _hand([F, F], [T_, F])
    assert vs == pytest.approx([1.5, 3.0])
    assert adv == pytest.approx([0.5, 1.0])
    # terminated at t=0: V_next0 = 0: vs0 = 1 + .5 * (1 - 1) = 1, adv0 = 0
    vs, adv = _hand([T_, F], [F, F])
    assert vs == pytest.approx([1.0, 3.0])
    assert adv == pytest.approx([0.0, 1.0])


@pytest.mark.parametrize("rho_bar,c_bar", [(1.0, 1.0), (1.5, 1.5), (2.0, 0.5)])
def test_huge_ratios_equal_ratio_at_the_clip(rho_bar, c_bar):
    mu_lp, _, rewards, values, bootstrap, term, trunc = _random_rollout(0)
    args = (rewards, values, bootstrap, term, trunc, 0.9, rho_bar, c_bar)
    huge = vtrace(mu_lp, mu_lp + 50.0, *args)
    at_clip = vtrace(mu_lp, mu_lp + math.log(max(rho_bar, c_bar)), *args)
    for a, b in zip(huge, at_clip, strict=True):
        torch.testing.assert_close(a, b)


def test_autoreset_step_does_not_leak_backwards():
    # Everything about the step after an episode end (its reward, ratio, and what follows)
    # may change without moving the ended episode's targets; only values[t+1] = V(final obs)
    # is shared with it.
    mu_lp, pi_lp, rewards, values, bootstrap, _, _ = _random_rollout(1)
    term = torch.zeros(T, N, dtype=torch.bool)
    trunc = torch.zeros(T, N, dtype=torch.bool)
    term[2, :2] = True
    trunc[2, 2:] = True
    vs, adv = vtrace(mu_lp, pi_lp, rewards, values, bootstrap, term, trunc, 0.9)
    rewards2, pi_lp2, values2 = rewards.clone(), pi_lp.clone(), values.clone()
    rewards2[3:] += 5.0
    pi_lp2[3:] += 1.0
    values2[4:] -= 3.0
    vs2, adv2 = vtrace(mu_lp, pi_lp2, rewards2, values2, bootstrap + 7.0, term, trunc, 0.9)
    torch.testing.assert_close(vs[:3], vs2[:3])
    torch.testing.assert_close(adv[:3], adv2[:3])
