"""Actor-critic network: encoder -> torso -> categorical policy and value heads."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from ..envs import EnvSpec
from .blocks import MLP, ConvEncoder, MultiSkipTorso, orthogonal_init


def encoder_kind(model: ModelConfig, spec: EnvSpec) -> str:
    if model.encoder != "auto":
        return model.encoder
    return "nature_cnn" if spec.is_image else "mlp"


def build_body(spec: EnvSpec, model: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """(encoder, torso) as ``model`` says; ``torso.out_dim`` is the width of the features
    the heads read. Every network shares this body; :func:`init_body` initialises it."""
    kind = encoder_kind(model, spec)
    if kind == "mlp":
        if spec.is_image:
            raise ValueError(f"model.encoder = 'mlp' cannot encode image observations {spec.obs_shape}; use nips_cnn or nature_cnn")
        encoder: nn.Module = nn.Flatten()
        in_dim = math.prod(spec.obs_shape)
    else:
        if not spec.is_image:
            raise ValueError(f"model.encoder = {kind!r} needs image observations, {spec.id} gives shape {spec.obs_shape}; use mlp")
        encoder = ConvEncoder(kind, spec.obs_shape, model.layer_norm)
        in_dim = encoder.out_dim
    if model.torso == "multiskip":
        torso: nn.Module = MultiSkipTorso(in_dim, model.width, model.depth, model.layer_norm)
    else:
        torso = MLP(in_dim, model.width, model.depth, model.layer_norm)
    return encoder, torso


def init_body(encoder: nn.Module, torso: nn.Module) -> None:
    # called after the heads are built, so seeded runs draw the same weights as before
    orthogonal_init(encoder)
    orthogonal_init(torso)


class ActorCritic(nn.Module):
    """Shared torso with a categorical policy head (logits) and a scalar value head."""

    def __init__(self, spec: EnvSpec, model: ModelConfig):
        super().__init__()
        self.encoder, self.torso = build_body(spec, model)
        self.policy = nn.Linear(self.torso.out_dim, spec.num_actions)
        self.value = nn.Linear(self.torso.out_dim, 1)
        init_body(self.encoder, self.torso)
        orthogonal_init(self.policy, gain=0.01)
        orthogonal_init(self.value, gain=1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.torso(self.encoder(obs))
        return self.policy(hidden), self.value(hidden).squeeze(-1)
