"""Actor-critic network: encoder -> MLP torso -> categorical policy and value heads."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from ..envs import EnvSpec
from .blocks import MLP, ConvEncoder, orthogonal_init


def encoder_kind(model: ModelConfig, spec: EnvSpec) -> str:
    if model.encoder != "auto":
        return model.encoder
    return "nature_cnn" if spec.is_image else "mlp"


class ActorCritic(nn.Module):
    """Shared torso with a categorical policy head (logits) and a scalar value head."""

    def __init__(self, spec: EnvSpec, model: ModelConfig):
        super().__init__()
        kind = encoder_kind(model, spec)
        if kind == "mlp":
            if spec.is_image:
                raise ValueError(f"model.encoder = 'mlp' cannot encode image observations {spec.obs_shape}; use nips_cnn or nature_cnn")
            self.encoder: nn.Module = nn.Flatten()
            in_dim = math.prod(spec.obs_shape)
        else:
            if not spec.is_image:
                raise ValueError(f"model.encoder = {kind!r} needs image observations, {spec.id} gives shape {spec.obs_shape}; use mlp")
            self.encoder = ConvEncoder(kind, spec.obs_shape, model.layer_norm)
            in_dim = self.encoder.out_dim
        self.torso = MLP(in_dim, model.width, model.depth, model.layer_norm)
        self.policy = nn.Linear(self.torso.out_dim, spec.num_actions)
        self.value = nn.Linear(self.torso.out_dim, 1)
        orthogonal_init(self.encoder)
        orthogonal_init(self.torso)
        orthogonal_init(self.policy, gain=0.01)
        orthogonal_init(self.value, gain=1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.torso(self.encoder(obs))
        return self.policy(hidden), self.value(hidden).squeeze(-1)
