"""Shared-memory rollout slots and shared policy weights.

Allocated once by the runner with torch's shared memory (file-descriptor strategy: no
named /dev/shm segment exists, so nothing can leak even after kill -9) and handed to the
actor processes at spawn. Only slot indices and small metadata travel over ZeroMQ.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..envs import EnvSpec
from ..sentinels import sentinel
from .rollout import rollout_arrays


class SlotPool:
    """``num_processes x slots_per_actor`` rollout slots; actor process k owns slots [k*S, (k+1)*S).

    Each slot holds one rollout of ``horizon`` steps from that actor process's ``envs_per_process[k]``
    envs (padded to the largest actor), plus the policy version that acted.
    """

    def __init__(self, spec: EnvSpec, horizon: int, envs_per_process: list[int], slots_per_actor: int):
        self.envs_per_process = envs_per_process
        self.slots_per_actor = slots_per_actor
        width = max(envs_per_process)
        num_slots = len(envs_per_process) * slots_per_actor
        self.tensors: dict[str, torch.Tensor] = {}
        for name, (shape, dtype) in rollout_arrays(spec, horizon, width).items():
            tensor = torch.from_numpy(np.zeros((num_slots, *shape), dtype)).share_memory_()
            tensor.fill_(sentinel(tensor.dtype))
            self.tensors[name] = tensor
        self.version = torch.full((num_slots,), -1, dtype=torch.int64).share_memory_()

    def owner(self, slot: int) -> int:
        return slot // self.slots_per_actor

    def slots_of(self, actor: int) -> list[int]:
        return list(range(actor * self.slots_per_actor, (actor + 1) * self.slots_per_actor))

    def numpy_views(self, slot: int, num_envs: int) -> dict[str, np.ndarray]:
        """Writable numpy views of one slot, trimmed to the owner's env count."""
        views = {}
        for name, tensor in self.tensors.items():
            array = tensor[slot].numpy()
            views[name] = array[:num_envs] if name == "next_obs" else array[:, :num_envs]
        return views

    def read(self, slots: list[int], out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Concatenate slots along the env axis (into ``out`` when given, e.g. pinned memory)."""
        batch = {}
        for name, tensor in self.tensors.items():
            axis = 0 if name == "next_obs" else 1
            parts = [tensor[s].narrow(axis, 0, self.envs_per_process[self.owner(s)]) for s in slots]
            if out is not None:
                torch.cat(parts, dim=axis, out=out[name])
                batch[name] = out[name]
            else:
                batch[name] = torch.cat(parts, dim=axis)
        return batch

    def invalidate(self, slot: int) -> None:
        """Refill a consumed slot with the sentinel (tests use it to catch double reads)."""
        for tensor in self.tensors.values():
            tensor[slot].fill_(sentinel(tensor.dtype))
        self.version[slot] = -1


class SharedWeights:
    """Policy parameters published by the learner with a version counter.

    Two buffers alternate; ``stamps[b]`` is the version buffer b holds (-1 while being
    written). A reader copies a buffer and accepts it only if its stamp did not change
    meanwhile, so a torn read is never used.
    """

    def __init__(self, module: torch.nn.Module):
        size = self._vector(module).numel()  # a Policy may have buffers only (bench's uniform policy)
        self.flat = torch.zeros(2, size).share_memory_()
        self.stamps = torch.full((2,), -1, dtype=torch.int64).share_memory_()
        self.latest = torch.full((1,), -1, dtype=torch.int64).share_memory_()

    @staticmethod
    def _vector(module: torch.nn.Module) -> torch.Tensor:
        parts = [p.detach().flatten() for p in module.parameters()] + [b.detach().flatten().float() for b in module.buffers()]
        return torch.cat(parts).cpu()

    def publish(self, module: torch.nn.Module, version: int) -> None:
        buffer = version % 2
        self.stamps[buffer] = -1
        self.flat[buffer].copy_(self._vector(module))
        self.stamps[buffer] = version
        self.latest[0] = version

    def fetch(self, module: torch.nn.Module, exactly: int | None = None, at_least: int = 0, timeout_s: float = 60.0,
              should_stop=None) -> int:
        """Load the newest version, once it is ``at_least`` (or exactly version ``exactly``, one of
        the last two published), into ``module``; returns the version loaded."""
        deadline = time.monotonic() + timeout_s
        while True:
            latest = int(self.latest[0])
            want = (latest if latest >= at_least else -1) if exactly is None else exactly
            if want >= 0 and latest >= want:
                buffer = want % 2
                if int(self.stamps[buffer]) == want:
                    vector = self.flat[buffer].clone()
                    if int(self.stamps[buffer]) == want:
                        self._load(module, vector)
                        return want
            if time.monotonic() > deadline or (should_stop is not None and should_stop()):
                wanted = exactly if exactly is not None else f"{at_least} or newer"
                raise TimeoutError(f"policy version {wanted} was not published within {timeout_s:.0f} s")
            time.sleep(0.0005)

    @staticmethod
    def _load(module: torch.nn.Module, vector: torch.Tensor) -> None:
        offset = 0
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                n = tensor.numel()
                tensor.copy_(vector[offset : offset + n].view_as(tensor))
                offset += n
