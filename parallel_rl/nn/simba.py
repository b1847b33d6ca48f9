"""SimbaV2 networks (Lee et al. 2025): features and weights kept on the unit hypersphere.

Every bias-free weight matrix (:class:`HyperLinear`) has unit norm per output unit; an
optimizer step moves it off the sphere and :func:`project_to_sphere` puts it back, so it
must run after every step. Features are l2-normalised after the embedding and after every
block, so no LayerNorm is needed and the effective learning rate does not decay as
weights grow. Magnitudes are learned by :class:`Scaler` vectors instead.

All layers carry a leading *member* axis: weights are [E, out, in] and activations
[E, B, dim], so SAC's two critics run as one batched network (one matmul per layer for
both). The actor has E = 1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import distributed


def l2_normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


class RunningMeanStd(nn.Module):
    """Running mean and variance of observations (Chan et al.'s parallel update).

    The statistics are buffers: they are saved with the network and published to the
    actor processes with its parameters, so acting normalises exactly as the learner does.
    ``count`` starts at a tiny value so the first batch sets the statistics almost alone.
    """

    def __init__(self, shape: tuple[int, ...], eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, *self.mean.shape).double()
        n = len(x)
        batch_mean = x.mean(0) if n else torch.zeros_like(self.mean)
        batch_var = x.var(0, unbiased=False) if n else torch.zeros_like(self.var)
        # on several ranks: the statistics of every rank's batch, so the replicas stay equal
        n, batch_mean, batch_var = distributed.pooled_moments(n, batch_mean, batch_var)
        if n == 0:
            return
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        m2 = self.var * self.count + batch_var * n + delta.square() * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return (x - self.mean.float()) * torch.rsqrt(self.var.float() + self.eps)


class HyperLinear(nn.Module):
    """Bias-free linear map whose rows (one per output unit) have unit l2 norm."""

    def __init__(self, in_dim: int, out_dim: int, members: int = 1):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, out_dim, in_dim))
        for w in self.weight.data:
            nn.init.orthogonal_(w)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self, where: torch.Tensor | None = None) -> None:
        """Rows back onto the unit sphere; only where ``where`` (a 0-d bool tensor) holds, if given."""
        normalized = l2_normalize(self.weight)
        self.weight.copy_(normalized if where is None else torch.where(where, normalized, self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [E, B, in] -> [E, B, out]
        return torch.bmm(x, self.weight.transpose(1, 2))


class Scaler(nn.Module):
    """Learnable per-unit scale, re-parametrised: stored as ``scale``, applied times ``init / scale``.

    The effective value starts at ``init``; storing it at ``scale`` sets how far one
    optimizer step moves it (Adam's steps are about the LR in the stored units).
    """

    def __init__(self, dim: int, init: float, scale: float, members: int = 1):
        super().__init__()
        self.value = nn.Parameter(torch.full((members, 1, dim), scale))
        self.forward_scale = init / scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (self.value * self.forward_scale)


class HyperEmbedding(nn.Module):
    """Append a constant ``shift`` (keeps the input's norm as information), l2-normalise,
    project, scale, l2-normalise."""

    def __init__(self, in_dim: int, width: int, scaler_init: float, scaler_scale: float, shift: float, members: int):
        super().__init__()
        self.shift = shift
        self.linear = HyperLinear(in_dim + 1, width, members)
        self.scaler = Scaler(width, scaler_init, scaler_scale, members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, x.new_full((*x.shape[:-1], 1), self.shift)], dim=-1)
        return l2_normalize(self.scaler(self.linear(l2_normalize(x))))


class LerpBlock(nn.Module):
    """``h <- l2norm(h + alpha * (l2norm(W2 (relu(s * W1 h) + 1e-8)) - h))``: a residual step
    along the sphere with a learnable per-unit interpolation ``alpha``; W1 expands 4x. The
    1e-8 is the official code's: it keeps W2's input off zero when every unit is inactive."""

    def __init__(self, width: int, scaler_init: float, scaler_scale: float, alpha_init: float, alpha_scale: float,
                 members: int, expansion: int = 4):
        super().__init__()
        root = math.sqrt(expansion)
        self.up = HyperLinear(width, width * expansion, members)
        self.up_scaler = Scaler(width * expansion, scaler_init / root, scaler_scale / root, members)
        self.down = HyperLinear(width * expansion, width, members)
        self.alpha = Scaler(width, alpha_init, alpha_scale, members)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        update = l2_normalize(self.down(torch.relu(self.up_scaler(self.up(h))) + 1e-8))
        return l2_normalize(h + self.alpha(update - h))


class HyperHead(nn.Module):
    """Output head: hyperspherical linear -> scaler -> hyperspherical linear + bias."""

    def __init__(self, width: int, out_dim: int, scaler_init: float, scaler_scale: float, members: int):
        super().__init__()
        self.hidden = HyperLinear(width, width, members)
        self.scaler = Scaler(width, scaler_init, scaler_scale, members)
        self.out = HyperLinear(width, out_dim, members)
        self.bias = nn.Parameter(torch.zeros(members, 1, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.scaler(self.hidden(h))) + self.bias


class SimbaV2Torso(nn.Module):
    """Embedding and ``depth`` LERP blocks; ``members`` independent copies run batched.

    Input [E, B, in_dim] (or [B, in_dim], shared by every member); output [E, B, width],
    every row on the unit sphere. Scalers start at sqrt(2 / width), alpha at 1 / (depth + 1)
    stored at 1 / sqrt(width), as in the paper.
    """

    def __init__(self, in_dim: int, width: int, depth: int, members: int = 1, shift: float = 3.0):
        super().__init__()
        self.members, self.width = members, width
        scaler = math.sqrt(2.0 / width)
        self.embedding = HyperEmbedding(in_dim, width, scaler, scaler, shift, members)
        self.blocks = nn.Sequential(*[
            LerpBlock(width, scaler, scaler, 1.0 / (depth + 1), 1.0 / math.sqrt(width), members) for _ in range(depth)
        ])

    # The output heads' scaler starts at 1 (init = scale = 1 in the official code), unlike
    # the torso's sqrt(2 / width): smaller would shrink the initial logits and action means.
    head_scaler = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members, -1, -1)
        return self.blocks(self.embedding(x))


@torch.no_grad()
def project_to_sphere(module: nn.Module, where: torch.Tensor | None = None) -> None:
    """Renormalise every :class:`HyperLinear` in ``module``; call after each optimizer step,
    with ``where`` its 0-d bool "stepped" (a skipped step leaves the weights bit for bit as
    they were, decided on the device)."""
    for m in module.modules():
        if isinstance(m, HyperLinear):
            m.normalize_(where)


__all__ = [
    "HyperHead",
    "HyperLinear",
    "LerpBlock",
    "RunningMeanStd",
    "Scaler",
    "SimbaV2Torso",
    "l2_normalize",
    "project_to_sphere",
]
