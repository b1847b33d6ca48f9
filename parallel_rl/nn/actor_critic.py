"""Actor-critic network: encoder -> torso -> categorical policy and value heads."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from ..envs import EnvSpec
from .blocks import MLP, ConvEncoder, MultiSkipTorso, fan_in_uniform_init, orthogonal_init


def encoder_kind(model: ModelConfig, spec: EnvSpec) -> str:
    if model.encoder != "auto":
        return model.encoder
    return "nature_cnn" if spec.is_image else "mlp"


def build_body(spec: EnvSpec, model: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """(encoder, torso) as ``model`` says; ``torso.out_dim`` is the width of the features
    the heads read. Every network shares this body; :func:`init_network` initialises it."""
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


def init_network(model: ModelConfig, encoder: nn.Module, torso: nn.Module, heads: list[tuple[nn.Module, float]]) -> None:
    """Initialise a network built from :func:`build_body` and its output ``heads`` (each with
    the gain of its orthogonal init) as ``model.init`` says. Called after the heads are
    built, so seeded runs draw the same weights as before the option existed."""
    if model.init == "fan_in_uniform":
        for module in (encoder, torso, *(head for head, _ in heads)):
            fan_in_uniform_init(module)
        return
    orthogonal_init(encoder)
    orthogonal_init(torso)
    for head, gain in heads:
        orthogonal_init(head, gain=gain)


class ActorCritic(nn.Module):
    """Shared torso with a categorical policy head (logits) and a scalar value head."""

    def __init__(self, spec: EnvSpec, model: ModelConfig):
        super().__init__()
        self.encoder, self.torso = build_body(spec, model)
        self.policy = nn.Linear(self.torso.out_dim, spec.num_actions)
        self.value = nn.Linear(self.torso.out_dim, 1)
        init_network(model, self.encoder, self.torso, [(self.policy, 0.01), (self.value, 1.0)])

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.torso(self.encoder(obs))
        return self.policy(hidden), self.value(hidden).squeeze(-1)
