"""The categorical critic's math (Bellemare et al. 2017, as used by SimbaV2).

A value is a distribution over fixed atoms ``z_0 < ... < z_{K-1}`` evenly spaced on
[v_min, v_max]. A Bellman target moves every atom to ``r + gamma * (z_j - alpha log pi)``;
:func:`project_categorical` puts that shifted distribution back onto the fixed atoms.
The support is fixed, so returns must stay inside it: :class:`RewardScaler` divides rewards
by running statistics of the discounted return, keeping scaled returns within about
``g_max`` (SimbaV2's G_max = 5, matching the support [-5, 5]).
"""

from __future__ import annotations

import torch

from .. import distributed


def categorical_support(v_min: float, v_max: float, num_atoms: int, device: torch.device | None = None) -> torch.Tensor:
    return torch.linspace(v_min, v_max, num_atoms, device=device)


def project_categorical(values: torch.Tensor, probs: torch.Tensor, v_min: float, v_max: float, num_atoms: int) -> torch.Tensor:
    """Project probability mass ``probs[b, i]`` sitting at ``values[b, i]`` onto the support.

    Values beyond the support are clipped to its edge atoms; a value between two atoms is
    split between them in proportion to its closeness (C51's projection). Mass is
    conserved: every output row sums to its input row's sum. Shapes: [B, I] in, [B, K] out.
    """
    spacing = (v_max - v_min) / (num_atoms - 1)
    position = (values.clamp(v_min, v_max) - v_min) / spacing  # in [0, K-1]
    # a NaN value (a poisoned batch) must reach the loss as NaN, so that the update is
    # skipped, rather than crash the scatter with a garbage index
    lower = position.nan_to_num(0.0).floor().clamp(max=num_atoms - 1)
    upper_weight = position - lower  # 0 when the value sits exactly on an atom; NaN stays NaN
    lower_index = lower.long()
    upper_index = (lower_index + 1).clamp(max=num_atoms - 1)
    out = torch.zeros(*probs.shape[:-1], num_atoms, dtype=probs.dtype, device=probs.device)
    out.scatter_add_(-1, lower_index, probs * (1.0 - upper_weight))
    out.scatter_add_(-1, upper_index, probs * upper_weight)
    return out


def categorical_td_target(
    next_probs: torch.Tensor,
    next_log_pi: torch.Tensor,
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
    alpha: torch.Tensor,
    v_min: float,
    v_max: float,
) -> torch.Tensor:
    """Soft Bellman target distribution ``r + gamma (1 - term) (z - alpha log pi(a'|s'))``.

    ``next_probs`` [B, K] is the target critic's distribution at (s', a'), ``next_log_pi``,
    ``rewards`` and ``terminated`` are [B]. A truncated transition is not terminated: it
    bootstraps from its final observation like any other.
    """
    num_atoms = next_probs.shape[-1]
    support = categorical_support(v_min, v_max, num_atoms, next_probs.device)
    discount = gamma * (~terminated).to(rewards.dtype)
    atoms = rewards.unsqueeze(-1) + discount.unsqueeze(-1) * (support - (alpha * next_log_pi).unsqueeze(-1))
    return project_categorical(atoms, next_probs, v_min, v_max, num_atoms)


class RewardScaler:
    """Divides rewards by ``max(sqrt(var(G) + eps), max|G| / g_max)`` (SimbaV2).

    ``G`` is each environment's running discounted return within its current episode,
    ``G <- gamma * G + r``, set back to 0 after an episode ends (terminated or truncated).
    ``var(G)`` and ``max|G|`` are taken over every G seen so far; steps that only reset an
    env are skipped. The second term keeps the largest scaled return within ``g_max``, so
    that a critic whose support ends at +-g_max can represent it.
    """

    def __init__(self, gamma: float, g_max: float = 5.0, eps: float = 1e-8):
        self.gamma, self.g_max, self.eps = gamma, g_max, eps
        self.returns: torch.Tensor | None = None  # [N] running G per env
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations (Chan et al.'s parallel variance)
        self.max_abs = 0.0

    @property
    def var(self) -> float:
        return self.m2 / self.count if self.count else 0.0

    @property
    def scale(self) -> float:
        return max((self.var + self.eps) ** 0.5, self.max_abs / self.g_max)

    def observe(self, rewards: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor, autoreset: torch.Tensor) -> None:
        """Count a time-major [T, N] rollout."""
        rewards = rewards.detach().double().cpu()
        ended = (terminated | truncated).cpu()
        live = (~autoreset).cpu()
        if self.returns is None or self.returns.shape != rewards.shape[1:]:
            self.returns = torch.zeros(rewards.shape[1:], dtype=torch.float64)
        seen = []
        for t in range(rewards.shape[0]):
            self.returns = torch.where(live[t], self.gamma * self.returns + rewards[t], self.returns)
            seen.append(self.returns[live[t]])
            self.returns = torch.where(ended[t] & live[t], torch.zeros_like(self.returns), self.returns)
        values = torch.cat(seen)
        n = values.numel()
        mean = values.mean() if n else torch.zeros((), dtype=torch.float64)
        var = values.var(unbiased=False) if n else torch.zeros((), dtype=torch.float64)
        # on several ranks: the returns of every rank's envs, so all replicas scale alike
        n, mean, var = distributed.pooled_moments(n, mean, var)
        max_abs = distributed.largest(float(values.abs().max()) if values.numel() else 0.0)
        if n:
            self._merge(n, float(mean), float(var) * n, max_abs)

    def _merge(self, n: int, mean: float, m2: float, max_abs: float) -> None:
        """Chan et al.'s merge of a batch of ``n`` returns (mean, sum of squared deviations, largest |G|)."""
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.max_abs = max(self.max_abs, max_abs)

    def __call__(self, rewards: torch.Tensor) -> torch.Tensor:
        return rewards / self.scale

    def state_dict(self) -> dict:
        # the statistics only: each env's running G belongs to its episode, and a resumed run's
        # envs start new ones (older checkpoints also hold it, and it is not read)
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "max_abs": self.max_abs}

    def load_state_dict(self, state: dict) -> None:
        self.returns = None  # zero for every env at the next observe
        self.count, self.mean, self.m2, self.max_abs = int(state["count"]), float(state["mean"]), float(state["m2"]), float(state["max_abs"])
