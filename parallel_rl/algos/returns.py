"""Return math as flat, pure functions over [T, N] tensors (time-major)."""

from __future__ import annotations

import torch


def n_step_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    bootstrap_value: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """PAAC's n-step returns ``R_t = r_t + gamma * R_{t+1}``, bootstrapped from ``V(s_T)``.

    ``values[t]`` is V(s_t) and ``bootstrap_value`` V(s_T) for the observation after the
    rollout. A termination at t stops the sum (``R_t = r_t``). A truncation at t bootstraps
    from V(s_{t+1}), the value of the final observation (``values[t+1]``, or
    ``bootstrap_value`` at the last step), because with next-step auto-reset the
    observation after a truncated step is that episode's last one, not the next episode's.
    """
    horizon = rewards.shape[0]
    next_values = torch.cat([values[1:], bootstrap_value.unsqueeze(0)], dim=0)
    returns = torch.empty_like(rewards)
    running = bootstrap_value
    for t in reversed(range(horizon)):
        running = torch.where(truncated[t], next_values[t], running)
        running = rewards[t] + gamma * running * (~terminated[t]).to(rewards.dtype)
        returns[t] = running
    return returns


def vtrace(
    behaviour_log_probs: torch.Tensor,
    target_log_probs: torch.Tensor,
    rewards: torch.Tensor,
    values: torch.Tensor,
    bootstrap_value: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IMPALA's V-trace targets ``vs`` and policy-gradient advantages (Espeholt et al. 2018).

    Inputs are time-major [T, N] (``bootstrap_value`` is [N]) with the conventions of
    :func:`n_step_returns`: ``values[t]`` is V(x_t); with next-step auto-reset the value of
    the observation after step t is ``values[t+1]`` (``bootstrap_value`` at t = T-1) even
    when step t ended an episode, where it is V(final observation). With
    ``rho_t = min(rho_bar, pi/mu)`` and ``c_t = min(c_bar, pi/mu)``::

        delta_t     = rho_t * (r_t + gamma * V_next_t - V(x_t))
        vs_t - V_t  = delta_t + gamma * c_t * (vs_{t+1} - V(x_{t+1}))   # cut at episode ends
        adv_t       = rho_t * (r_t + gamma * vs_next_t - V(x_t))

    ``V_next_t`` is 0 after a termination and ``values[t+1]``/``bootstrap_value``
    otherwise (a truncation bootstraps from the final observation). ``vs_next_t`` is
    ``vs_{t+1}`` inside an episode, ``V_next_t`` after an episode end, and
    ``bootstrap_value`` at t = T-1. Termination wins when both flags are set. Targets on
    auto-reset steps are junk for the caller to mask; they never leak backwards. With
    on-policy data and ``rho_bar = c_bar = 1``, ``vs`` equals :func:`n_step_returns`.
    Nothing is detached here: the caller passes detached tensors.
    """
    horizon = rewards.shape[0]
    ratios = torch.exp(target_log_probs - behaviour_log_probs)
    rhos = torch.clamp(ratios, max=rho_bar)
    cs = torch.clamp(ratios, max=c_bar)
    not_terminated = (~terminated).to(rewards.dtype)
    # The trace must not cross into the next episode, truncated or not: x_{t+1} after an
    # episode end is the final observation, whose vs_{t+1} - V(x_{t+1}) is not in the data.
    continues = (~(terminated | truncated)).to(rewards.dtype)
    next_values = torch.cat([values[1:], bootstrap_value.unsqueeze(0)], dim=0) * not_terminated
    deltas = rhos * (rewards + gamma * next_values - values)

    vs_minus_v = torch.empty_like(rewards)
    # acc holds vs_{t+1} - V(x_{t+1}); zero past the rollout so vs_next_{T-1} = bootstrap.
    acc = torch.zeros_like(bootstrap_value)
    vs_next = torch.empty_like(rewards)
    for t in reversed(range(horizon)):
        carried = continues[t] * acc
        # V_next_t + carried is vs_{t+1} inside an episode and V_next_t after its end.
        vs_next[t] = next_values[t] + carried
        acc = deltas[t] + gamma * cs[t] * carried
        vs_minus_v[t] = acc
    vs = values + vs_minus_v
    pg_advantages = rhos * (rewards + gamma * vs_next - values)
    return vs, pg_advantages


def lambda_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    bootstrap_value: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """λ-returns ``G_t = r_t + gamma * ((1 - lam) * V_next_t + lam * G_{t+1})``.

    Conventions of :func:`n_step_returns`: ``values[t]`` is V(s_t), ``bootstrap_value``
    V(s_T); ``V_next_t`` is ``values[t+1]`` (``bootstrap_value`` at t = T-1), which after a
    truncation is the value of the episode's final observation. A termination at t stops
    the sum (``G_t = r_t``); a truncation bootstraps from ``V_next_t`` alone (``G_{t+1}``
    belongs to the next episode); at t = T-1, ``G_T`` is ``bootstrap_value``. lam = 1 gives
    :func:`n_step_returns`, lam = 0 one-step TD targets. With ``values`` the max over
    actions of Q this is PQN's Q(λ) target; with a state-value function, GAE's returns.
    Targets on auto-reset steps are junk for the caller to mask; they never leak backwards.
    """
    horizon = rewards.shape[0]
    next_values = torch.cat([values[1:], bootstrap_value.unsqueeze(0)], dim=0)
    returns = torch.empty_like(rewards)
    running = bootstrap_value
    for t in reversed(range(horizon)):
        mixed = torch.where(truncated[t], next_values[t], (1 - lam) * next_values[t] + lam * running)
        running = rewards[t] + gamma * mixed * (~terminated[t]).to(rewards.dtype)
        returns[t] = running
    return returns


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    bootstrap_value: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates (Schulman et al. 2016) and their value targets.

    ``A_t = delta_t + gamma * lam * A_{t+1}`` with
    ``delta_t = r_t + gamma * V_next_t - V(s_t)`` (``V_next_t`` = 0 after a termination);
    the sum stops at every episode end, terminated or truncated. Conventions of
    :func:`lambda_returns`, whose λ-returns are exactly ``A + V``: returns (advantages,
    returns). Nothing is detached here: the caller passes detached tensors.
    """
    horizon = rewards.shape[0]
    not_terminated = (~terminated).to(rewards.dtype)
    continues = (~(terminated | truncated)).to(rewards.dtype)
    next_values = torch.cat([values[1:], bootstrap_value.unsqueeze(0)], dim=0)
    deltas = rewards + gamma * next_values * not_terminated - values
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(bootstrap_value)
    for t in reversed(range(horizon)):
        running = deltas[t] + gamma * lam * continues[t] * running
        advantages[t] = running
    return advantages, advantages + values


def heuristic_discount(horizon: int, low: float = 0.95, high: float = 0.995) -> float:
    """SimbaV2's discount from the episode limit H in agent steps: ``clip(1 - 5 / H, low, high)``,
    i.e. an effective horizon 1 / (1 - gamma) of a fifth of the episode. H = 0 (no limit) gives ``high``."""
    if horizon <= 0:
        return high
    return min(high, max(low, 1.0 - 5.0 / horizon))
