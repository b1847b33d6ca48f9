"""Stabilised building blocks: CNN encoders and MLP torsos with LayerNorm, orthogonal init."""

from __future__ import annotations

import math

import torch
from torch import nn


def orthogonal_init(module: nn.Module, gain: float = math.sqrt(2)) -> nn.Module:
    """Orthogonal weights, zero biases, for every Linear and Conv2d inside ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.orthogonal_(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def fan_in_uniform_init(module: nn.Module) -> nn.Module:
    """Weights and biases uniform in +-1/sqrt(fan_in), for every Linear and Conv2d inside
    ``module``: the initialisation of PAAC's code ("torch" in its networks.py)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            bound = 1.0 / math.sqrt(m.weight[0].numel())
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.uniform_(m.bias, -bound, bound)
    return module


# (out_channels, kernel, stride) per convolution
CNN_LAYERS = {
    "nips_cnn": ((16, 8, 4), (32, 4, 2)),
    "nature_cnn": ((32, 8, 4), (64, 4, 2), (64, 3, 1)),
}


def smallest_image_side(kind: str) -> int:
    """The fewest pixels per side that leave ``kind``'s last convolution an output (Nature: 36, NIPS: 20)."""
    side = 1
    for _, kernel, stride in reversed(CNN_LAYERS[kind]):
        side = (side - 1) * stride + kernel
    return side


class ConvEncoder(nn.Module):
    """NIPS (Mnih 2013) or Nature (Mnih 2015) convolutions; uint8 frames in, flat features out.

    With ``layer_norm`` each convolution is followed by a LayerNorm over (C, H, W).
    """

    def __init__(self, kind: str, obs_shape: tuple[int, int, int], layer_norm: bool):
        super().__init__()
        channels, height, width = obs_shape
        layers: list[nn.Module] = []
        for out_channels, kernel, stride in CNN_LAYERS[kind]:
            layers.append(nn.Conv2d(channels, out_channels, kernel, stride))
            height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
            if height < 1 or width < 1:
                raise ValueError(f"observation {obs_shape} is too small for the {kind} encoder")
            if layer_norm:
                layers.append(nn.LayerNorm([out_channels, height, width]))
            layers.append(nn.ReLU())
            channels = out_channels
        layers.append(nn.Flatten())
        self.net = nn.Sequential(*layers)
        self.out_dim = channels * height * width
        self.memory_format = torch.contiguous_format

    def to_channels_last(self) -> None:
        """Weights and frames in NHWC layout from now on (``perf.channels_last``); the
        parameters stay the same objects, so an optimizer built before keeps them."""
        self.to(memory_format=torch.channels_last)
        self.memory_format = torch.channels_last

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # scaled in place on a fresh copy (in the convolutions' layout): one pass fewer over the
        # frames, about 2% of an Atari PPO iteration on a CPU
        frames = obs.to(torch.float32, memory_format=self.memory_format, copy=True)
        return self.net(frames.mul_(1.0 / 255.0))


class MLP(nn.Module):
    """``depth`` x (Linear -> [LayerNorm] -> ReLU); depth 0 is the identity."""

    def __init__(self, in_dim: int, width: int, depth: int, layer_norm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(depth):
            layers.append(nn.Linear(dim, width))
            if layer_norm:
                layers.append(nn.LayerNorm(width))
            layers.append(nn.ReLU())
            dim = width
        self.net = nn.Sequential(*layers)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _norm(width: int, layer_norm: bool) -> nn.Module:
    return nn.LayerNorm(width) if layer_norm else nn.Identity()


class MultiSkipBlock(nn.Module):
    """One residual block of the multi-skip torso: ``out = x + F(x) + g`` with
    ``F = LN . Linear . ReLU . LN . Linear . ReLU`` (applied right to left: ReLU first)
    and ``g`` the torso's projected encoder features (Castanyer et al. 2025)."""

    def __init__(self, width: int, layer_norm: bool):
        super().__init__()
        self.residual = nn.Sequential(
            nn.ReLU(), nn.Linear(width, width), _norm(width, layer_norm),
            nn.ReLU(), nn.Linear(width, width), _norm(width, layer_norm),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x) + skip


class MultiSkipTorso(nn.Module):
    """Multi-skip residual MLP: ``g = LN(Linear(features))`` is added into every one of
    ``blocks`` residual blocks (the stream starts at g), then Linear -> LN -> ReLU out.

    Counting Linear layers, 1 / 3 / 5 blocks are 4 / 8 / 12 layers, the plain-MLP depths
    they are compared with. Skipping g into every block rather than only the first keeps
    gradients flowing to the encoder as depth grows.
    """

    def __init__(self, in_dim: int, width: int, blocks: int, layer_norm: bool):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, width), _norm(width, layer_norm))
        self.blocks = nn.ModuleList(MultiSkipBlock(width, layer_norm) for _ in range(blocks))
        self.out = nn.Sequential(nn.Linear(width, width), _norm(width, layer_norm), nn.ReLU())
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.project(x)
        hidden = skip
        for block in self.blocks:
            hidden = block(hidden, skip)
        return self.out(hidden)
