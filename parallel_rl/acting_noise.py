"""The random numbers acting draws: one counter-based stream per env.

Env i's k-th action is drawn from numbers that depend only on env i's seed (the seed its
environment gets, ``seed + i`` over all ranks) and k, never on which process, rank or group
of envs steps it, nor on how many envs share a call. A seeded run therefore acts
identically whether its envs are stepped by one process, several actor processes or
several ranks: what lets a 2-rank run with 8 envs each repeat a 1-rank run with 16.

The numbers come from an integer hash of (env seed, step, draw, element), computed on the
host with numpy and handed to the acting device as one tensor (no generator state). The hash
is a few dozen elementwise steps over a call's few hundred numbers, each cheaper in numpy
than a torch op's dispatch on a CPU (the transport probe's acting call took half the time:
docs/benchmarks.md) or a kernel launch on a GPU. On a GPU the copy waits for the forward
pass queued before it, which the acting call's results, brought back to the host, wait for
anyway. Inside :meth:`EnvStreams.acting` the policies' ``act``
draw here; elsewhere (evaluation, tests) the same functions fall back to torch's current
generator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

_MASK = 0xFFFFFFFF
_MULTIPLIER = 0x45D9F3B  # < 2**27: products of 32-bit values stay within int64


def _mix(x: np.ndarray | int) -> np.ndarray | int:
    """A 32-bit integer hash with full avalanche (values in [0, 2**32) held as int64), of each
    element of an int64 array or of one Python int."""
    x = (((x >> 16) ^ x) * _MULTIPLIER) & _MASK
    x = (((x >> 16) ^ x) * _MULTIPLIER) & _MASK
    return (x >> 16) ^ x


class EnvStreams:
    """One stream per env of a collector: ``keys[i]`` is env i's seed, ``steps[i]`` how many
    times env i has acted (both on the host); the draws go to ``device``."""

    def __init__(self, env_seeds: np.ndarray | torch.Tensor, device: torch.device | str = "cpu"):
        keys = np.asarray(env_seeds.cpu() if isinstance(env_seeds, torch.Tensor) else env_seeds, dtype=np.int64)
        self.keys = _mix(_mix(keys & _MASK) ^ ((keys >> 32) & _MASK))
        self.steps = np.zeros(len(keys), np.int64)
        self.device = torch.device(device)

    @contextmanager
    def acting(self, envs: slice) -> Iterator[None]:
        """The envs ``envs`` act once: every draw inside comes from their streams, at their
        current step; the step advances after.

        A policy that draws from torch's generator instead (``Categorical.sample`` in an
        algorithm written outside the package) finds it seeded from the call's first env, its
        step and the call's size, and the caller's generator is as it was after: a seeded run
        then still reproduces, in actor processes as inline, and acting never shifts the
        learner's draws. Only ``acting_noise``'s draws are also the same however the envs are
        split into calls (torch's CPU generator takes a 32-bit seed: two calls of a long run
        may share one, harmless for sampling)."""
        global _active
        outer = _active
        steps = self.steps[envs]
        _active = _Draws(_mix(_mix(self.keys[envs] ^ (steps & _MASK)) ^ (steps >> 32)))
        try:
            with _torch_generator_seeded(self._call_seed(envs), self.device):
                yield
        finally:
            _active = outer
            self.steps[envs] += 1

    @contextmanager
    def rewound_after(self) -> Iterator[None]:
        """Acting inside leaves every env's step where it was (acting once to compile)."""
        steps = self.steps.copy()
        try:
            yield
        finally:
            self.steps[:] = steps

    def _call_seed(self, envs: slice) -> int:
        first = range(len(self.keys))[envs][0]
        key, step, size = int(self.keys[first]), int(self.steps[first]), len(self.keys[envs])
        return _mix(_mix(_mix(key ^ (step & _MASK)) ^ (step >> 32)) ^ size)


@contextmanager
def _torch_generator_seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's CPU generator, and ``device``'s where it is a GPU, seeded with ``seed`` inside and
    as they were after."""
    generators = [torch.default_generator]
    if device.type == "cuda":
        generators.append(torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()])
    states = [generator.get_state() for generator in generators]
    for generator in generators:
        generator.manual_seed(seed)
    try:
        yield
    finally:
        for generator, state in zip(generators, states, strict=True):
            generator.set_state(state)


class _Draws:
    """The draws of one act call: row i from env i's stream at its step, each draw distinct."""

    def __init__(self, row_keys: np.ndarray):
        self.row_keys = row_keys
        self.count = 0

    def uniform(self, rows: int, shape: tuple[int, ...]) -> np.ndarray:
        if rows != len(self.row_keys):
            raise ValueError(f"acting drew {rows} rows of random numbers for a call of {len(self.row_keys)} envs")
        index = np.arange(math.prod(shape), dtype=np.int64) + (self.count << 20)
        self.count += 1
        bits = _mix(_mix(self.row_keys[:, None] ^ index))
        # the top 24 bits, centred in their interval: uniform in (0, 1). Above 2**23 float32 holds
        # no halves, and the topmost value rounds up to 1.0 (-log(-log 1) is infinite: a Gumbel
        # draw that picks its action whatever the logits): it is held at the largest float32 below 1
        centred = ((bits >> 8).astype(np.float32) + np.float32(0.5)) / np.float32(1 << 24)
        return np.minimum(centred, _BELOW_ONE).reshape(rows, *shape)


_BELOW_ONE = np.float32(1 - 2**-24)


_active: _Draws | None = None


def uniform(rows: int, *shape: int, device: torch.device) -> torch.Tensor:
    """Uniform numbers in (0, 1) of shape ``[rows, *shape]``: row i from the stream of the
    call's i-th env while acting, torch's generator otherwise."""
    if _active is None:
        return torch.rand((rows, *shape), device=device).clamp_(min=2.0**-25)
    return torch.from_numpy(_active.uniform(rows, shape)).to(device)


def normal(rows: int, *shape: int, device: torch.device) -> torch.Tensor:
    """Standard normal numbers of shape ``[rows, *shape]`` (Box-Muller on two uniform draws)."""
    radius = (-2.0 * uniform(rows, *shape, device=device).log()).sqrt()
    return radius * torch.cos(2.0 * math.pi * uniform(rows, *shape, device=device))


def integers(rows: int, high: int, device: torch.device) -> torch.Tensor:
    """One integer in [0, high) per row."""
    return (uniform(rows, device=device) * high).long().clamp_(max=high - 1)


def gumbel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """One categorical sample per row of ``logits`` (the Gumbel-max trick, no normalisation)."""
    gumbel = -(-uniform(*logits.shape, device=logits.device).log()).log()
    return (logits + gumbel).argmax(dim=-1)
