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
