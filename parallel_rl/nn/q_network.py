"""Q-network: the actor-critic's encoder and torso with one Q-value per action."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..envs import EnvSpec
from .actor_critic import build_body, init_network


class QNetwork(nn.Module):
    """Q-values for every action."""

    def __init__(self, spec: EnvSpec, model: ModelConfig):
        super().__init__()
        self.encoder, self.torso = build_body(spec, model)
        self.q = nn.Linear(self.torso.out_dim, spec.num_actions)
        init_network(model, self.encoder, self.torso, [(self.q, 0.01)])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.q(self.torso(self.encoder(obs)))

    def q_values(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, num_actions]: what an epsilon-greedy policy acts on."""
        return self(obs)
