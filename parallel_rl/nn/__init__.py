"""Network building blocks and heads."""

from .actor_critic import ActorCritic
from .blocks import MLP, ConvEncoder, MultiSkipBlock, MultiSkipTorso, orthogonal_init
from .q_network import QNetwork

__all__ = ["ActorCritic", "ConvEncoder", "MLP", "MultiSkipBlock", "MultiSkipTorso", "QNetwork", "orthogonal_init"]
