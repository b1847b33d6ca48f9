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


# (out_channels, kernel, stride) per convolution
CNN_LAYERS = {
    "nips_cnn": ((16, 8, 4), (32, 4, 2)),
    "nature_cnn": ((32, 8, 4), (64, 4, 2), (64, 3, 1)),
}


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

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float() * (1.0 / 255.0))


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
