"""The random numbers acting draws: one counter-based stream per env.

Env i's k-th action is drawn from numbers that depend only on env i's seed (the seed its
environment gets, ``seed + i`` over all ranks) and k, never on which process, rank or group
of envs steps it, nor on how many envs share a call. A seeded run therefore acts
identically whether its envs are stepped by one process, several actor processes or
several ranks: what lets a 2-rank run with 8 envs each repeat a 1-rank run with 16.

The numbers come from an integer hash of (env seed, step, draw, element), computed with
elementwise tensor ops on the acting device (no generator state, no host sync). Inside
:meth:`EnvStreams.acting` the policies' ``act`` draw here; elsewhere (evaluation, tests) the
same functions fall back to torch's current generator.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_MASK = 0xFFFFFFFF
_MULTIPLIER = 0x45D9F3B  # < 2**27: products of 32-bit values stay within int64


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with full avalanche (values in [0, 2**32) held as int64)."""
    x = (((x >> 16) ^ x) * _MULTIPLIER) & _MASK
    x = (((x >> 16) ^ x) * _MULTIPLIER) & _MASK
    return (x >> 16) ^ x


class EnvStreams:
    """One stream per env of a collector: ``keys[i]`` is env i's seed, ``steps[i]`` how many
    times env i has acted."""

    def __init__(self, env_seeds: torch.Tensor):
        keys = env_seeds.to(torch.int64)
        self.keys = _mix(_mix(keys & _MASK) ^ ((keys >> 32) & _MASK))
        self.steps = torch.zeros_like(keys)
        # host copies, so seeding torch's generator for a call needs no device sync
        self.host_keys, self.host_steps = self.keys.to("cpu", copy=True), self.steps.to("cpu", copy=True)

    @contextmanager
    def acting(self, envs: slice) -> Iterator[None]:
        """The envs ``envs`` act once: every draw inside comes from their streams, at their
        current step; the step advances after.

        A policy that draws from torch's generator instead (``Categorical.sample`` in an
        algorithm written outside the package) gets a generator seeded from the call's first
        env and step and the call's size, and the caller's generator is restored after: a
        seeded run then still reproduces, in actor processes as inline, and acting never
        shifts the learner's draws. Only ``acting_noise``'s draws are also the same however
        the envs are split into calls."""
        global _active
        outer = _active
        _active = _Draws(_mix(_mix(self.keys[envs] ^ (self.steps[envs] & _MASK)) ^ (self.steps[envs] >> 32)))
        try:
            with _torch_generator_seeded(self._call_seed(envs), self.keys.device):
                yield
        finally:
            _active = outer
            self.steps[envs] += 1
            self.host_steps[envs] += 1

    @contextmanager
    def rewound_after(self) -> Iterator[None]:
        """Acting inside leaves every env's step where it was (acting once to compile)."""
        steps = self.steps.clone()
        try:
            yield
        finally:
            self.steps.copy_(steps)
            self.host_steps.copy_(steps)

    def _call_seed(self, envs: slice) -> int:
        keys, steps = self.host_keys[envs], self.host_steps[envs]
        first = _mix(_mix(keys[0] ^ (steps[0] & _MASK)) ^ (steps[0] >> 32))
        return int(_mix(first ^ len(keys))) | (len(keys) << 32)


@contextmanager
def _torch_generator_seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's generator for ``device`` (and the CPU's) seeded with ``seed`` inside, as it was after."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


class _Draws:
    """The draws of one act call: row i from env i's stream at its step, each draw distinct."""

    def __init__(self, row_keys: torch.Tensor):
        self.row_keys = row_keys
        self.count = 0

    def uniform(self, rows: int, shape: tuple[int, ...]) -> torch.Tensor:
        if rows != len(self.row_keys):
            raise ValueError(f"acting drew {rows} rows of random numbers for a call of {len(self.row_keys)} envs")
        elements = math.prod(shape)
        index = torch.arange(elements, device=self.row_keys.device) + (self.count << 20)
        self.count += 1
        bits = _mix(_mix(self.row_keys.unsqueeze(1) ^ index))
        # the top 24 bits, centred in their interval: uniform in (0, 1), never 0 or 1
        return (((bits >> 8).to(torch.float32) + 0.5) / float(1 << 24)).reshape(rows, *shape)


_active: _Draws | None = None


def uniform(rows: int, *shape: int, device: torch.device) -> torch.Tensor:
    """Uniform numbers in (0, 1) of shape ``[rows, *shape]``: row i from the stream of the
    call's i-th env while acting, torch's generator otherwise."""
    if _active is None:
        return torch.rand((rows, *shape), device=device).clamp_(min=2.0**-25)
    return _active.uniform(rows, shape).to(device)


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
