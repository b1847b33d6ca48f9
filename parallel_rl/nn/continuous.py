"""Networks for continuous control: a tanh-Gaussian policy and Q-critics.

Two architectures behind one interface (``model.encoder``): ``simbav2`` (hyperspherical,
see simba.py) and ``mlp``, the plain LayerNorm MLP baseline. Critics return
``[E, B, K]``: E members (2 for clipped double-Q), K atoms of a categorical value
distribution (logits) or K = 1 for a scalar Q.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .. import acting_noise
from ..config import ModelConfig
from ..contracts import Policy
from .blocks import MLP, orthogonal_init
from .simba import HyperHead, RunningMeanStd, SimbaV2Torso

LOG_STD_MIN, LOG_STD_MAX = -10.0, 2.0


def squashed_gaussian_sample(mean: torch.Tensor, log_std: torch.Tensor,
                             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A reparametrised sample ``tanh(mean + std * noise)`` and its log-density (summed over
    action dimensions, with the tanh change of variables); ``noise`` standard normal, drawn
    from torch's generator when not given."""
    if noise is None:
        noise = torch.randn_like(mean)
    pre_tanh = mean + log_std.exp() * noise
    log_prob = (-0.5 * noise.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|
    log_prob = log_prob - (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
    return torch.tanh(pre_tanh), log_prob


def bounded_log_std(raw: torch.Tensor) -> torch.Tensor:
    return LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1.0)


class TanhGaussianPolicy(Policy):
    """What the actors run: observation normalisation, the policy network, and the warm-up flag.

    Every buffer here (the normaliser's statistics, ``warming_up``) is published to the
    actor processes together with the parameters, so they normalise and warm up exactly
    as the learner says.
    """

    def __init__(self, obs_dim: int, action_shape: tuple[int, ...], model: ModelConfig):
        super().__init__()
        self.action_shape = tuple(action_shape)
        action_dim = math.prod(self.action_shape)
        self.obs_norm = RunningMeanStd((obs_dim,))
        self.register_buffer("warming_up", torch.ones(()))  # 1: act uniformly at random
        self.simba = model.encoder == "simbav2"
        if self.simba:
            self.torso = SimbaV2Torso(obs_dim, model.width, model.depth)
            scaler = self.torso.head_scaler
            self.mean = HyperHead(model.width, action_dim, scaler, scaler, 1)
            self.log_std = HyperHead(model.width, action_dim, scaler, scaler, 1)
        else:
            self.torso = orthogonal_init(MLP(obs_dim, model.width, model.depth, model.layer_norm))
            self.mean = orthogonal_init(nn.Linear(self.torso.out_dim, action_dim), gain=0.01)
            self.log_std = orthogonal_init(nn.Linear(self.torso.out_dim, action_dim), gain=0.01)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of the pre-tanh Gaussian for already normalised observations."""
        hidden = self.torso(obs)
        mean, raw = self.mean(hidden), self.log_std(hidden)
        if self.simba:
            mean, raw = mean.squeeze(0), raw.squeeze(0)
        return mean, bounded_log_std(raw)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return squashed_gaussian_sample(*self(obs))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions in [-1, 1] (the env factory maps them to the env's bounds) and their log-densities.

        ``greedy`` takes tanh of the Gaussian's mean; otherwise actions are sampled, or
        uniformly random while warming up.
        """
        n = obs.shape[0]
        if not greedy and bool(self.warming_up):
            actions = acting_noise.uniform(n, *self.action_shape, device=obs.device) * 2.0 - 1.0
            return actions, torch.full((n,), -math.log(2.0) * actions[0].numel(), device=obs.device)
        mean, log_std = self(self.obs_norm(obs))
        if greedy:
            return torch.tanh(mean), torch.zeros(n, device=obs.device)
        return squashed_gaussian_sample(mean, log_std, acting_noise.normal(n, *mean.shape[1:], device=obs.device))


class SimbaV2Critic(nn.Module):
    def __init__(self, in_dim: int, width: int, depth: int, members: int, outputs: int):
        super().__init__()
        self.torso = SimbaV2Torso(in_dim, width, depth, members)
        self.head = HyperHead(width, outputs, self.torso.head_scaler, self.torso.head_scaler, members)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.head(self.torso(torch.cat([obs, actions], dim=-1)))


class MLPCritic(nn.Module):
    def __init__(self, in_dim: int, width: int, depth: int, layer_norm: bool, members: int, outputs: int):
        super().__init__()
        torsos = [orthogonal_init(MLP(in_dim, width, depth, layer_norm)) for _ in range(members)]
        self.members = nn.ModuleList(
            nn.Sequential(torso, orthogonal_init(nn.Linear(torso.out_dim, outputs), gain=1.0)) for torso in torsos
        )

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, actions], dim=-1)
        return torch.stack([member(x) for member in self.members])


def make_critic(obs_dim: int, action_dim: int, model: ModelConfig, members: int, outputs: int) -> nn.Module:
    if model.encoder == "simbav2":
        return SimbaV2Critic(obs_dim + action_dim, model.critic_width, model.critic_depth, members, outputs)
    return MLPCritic(obs_dim + action_dim, model.critic_width, model.critic_depth, model.layer_norm, members, outputs)


__all__ = ["MLPCritic", "SimbaV2Critic", "TanhGaussianPolicy", "make_critic", "squashed_gaussian_sample"]
