"""Network building blocks and heads."""

from .actor_critic import ActorCritic
from .blocks import MLP, ConvEncoder, orthogonal_init

__all__ = ["ActorCritic", "ConvEncoder", "MLP", "orthogonal_init"]
