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
from .rollout import env_columns, rollout_arrays


class SlotPool:
    """``num_processes x slots_per_actor`` rollout slots; actor process k owns slots [k*S, (k+1)*S).

    Slot j of every actor process lies in one block of all the envs' columns (actor k's
    columns follow actor k - 1's), holding one rollout of ``horizon`` steps, plus the policy
    version that acted. Actor processes fill their slots in the same order and the learner
    takes one rollout of each in order, so a batch is normally one whole block
    (:meth:`block`): learned from where the actors wrote it, with no copy.
    """

    def __init__(self, spec: EnvSpec, horizon: int, envs_per_process: list[int], slots_per_actor: int):
        self.envs_per_process = envs_per_process
        self.slots_per_actor = slots_per_actor
        self.columns = env_columns(envs_per_process)
        self.tensors: dict[str, torch.Tensor] = {}
        for name, (shape, dtype) in rollout_arrays(spec, horizon, self.columns[-1].stop).items():
            tensor = torch.from_numpy(np.zeros((slots_per_actor, *shape), dtype)).share_memory_()
            tensor.fill_(sentinel(tensor.dtype))
            self.tensors[name] = tensor
        self.version = torch.full((len(envs_per_process) * slots_per_actor,), -1, dtype=torch.int64).share_memory_()

    def owner(self, slot: int) -> int:
        return slot // self.slots_per_actor

    def slots_of(self, actor: int) -> list[int]:
        return list(range(actor * self.slots_per_actor, (actor + 1) * self.slots_per_actor))

    def _view(self, name: str, slot: int) -> torch.Tensor:
        actor, block = divmod(slot, self.slots_per_actor)
        tensor, columns = self.tensors[name][block], self.columns[actor]
        return tensor[columns] if name == "next_obs" else tensor[:, columns]

    def numpy_views(self, slot: int) -> dict[str, np.ndarray]:
        """Writable numpy views of one slot: its owner's columns of its block."""
        return {name: self._view(name, slot).numpy() for name in self.tensors}

    def block(self, slots: list[int]) -> dict[str, torch.Tensor] | None:
        """The block that is exactly ``slots`` (slot j of every actor process, in process order),
        as tensors sharing its memory; None when ``slots`` are not one block (after a restart)."""
        block = slots[0] % self.slots_per_actor
        if slots != [k * self.slots_per_actor + block for k in range(len(self.envs_per_process))]:
            return None
        return {name: tensor[block] for name, tensor in self.tensors.items()}

    def read(self, slots: list[int], out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Copy slots, concatenated along the env axis (into ``out`` when given, e.g. pinned memory)."""
        batch = {}
        for name in self.tensors:
            parts = [self._view(name, s) for s in slots]
            axis = 0 if name == "next_obs" else 1
            if out is not None:
                torch.cat(parts, dim=axis, out=out[name])
                batch[name] = out[name]
            else:
                batch[name] = torch.cat(parts, dim=axis)
        return batch


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
            if exactly is not None and latest >= exactly + 2:  # both buffers hold newer versions now
                raise RuntimeError(f"policy version {exactly} was overwritten before it could be read: the newest "
                                   f"is {latest}, and only the last two are kept")
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
