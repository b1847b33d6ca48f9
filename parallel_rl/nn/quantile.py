"""Quantile Q-network: the shared encoder and torso with N quantiles of the return per action."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..envs import EnvSpec
from .actor_critic import build_body, init_network


class QuantileQNetwork(nn.Module):
    """``forward(obs) -> [B, num_actions, num_quantiles]``; Q(s, a) is the mean over quantiles."""

    def __init__(self, spec: EnvSpec, model: ModelConfig, num_quantiles: int):
        super().__init__()
        self.num_actions, self.num_quantiles = spec.num_actions, num_quantiles
        self.encoder, self.torso = build_body(spec, model)
        self.quantiles = nn.Linear(self.torso.out_dim, self.num_actions * num_quantiles)
        init_network(model, self.encoder, self.torso, [(self.quantiles, 0.01)])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.quantiles(self.torso(self.encoder(obs)))
        return out.view(-1, self.num_actions, self.num_quantiles)

    def q_values(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, num_actions]: the mean of each action's quantiles."""
        return self(obs).mean(-1)
