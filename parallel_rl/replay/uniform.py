"""Uniform replay of vector transitions (s, a, r, s', terminated) in preallocated tensors.

Storage lives on the learner's device when it fits there (on a GPU: at most half of the
memory free at allocation), else in host memory; a GPU learner's minibatches are gathered
into pinned buffers, so that they copy fast. Sampling draws indices uniformly from what is stored.
The buffer can be saved with checkpoints (only the filled part is written).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from ..sentinels import sentinel

GPU_MEMORY_FRACTION = 0.5  # of the memory free at allocation; the rest is for the networks


@dataclass
class Transitions:
    obs: torch.Tensor  # [B, *obs_shape]
    actions: torch.Tensor  # [B, *action_shape] float32
    rewards: torch.Tensor  # [B] float32, as the environment gave them
    next_obs: torch.Tensor  # [B, *obs_shape]: the observation after the action (an episode's final one at its end)
    terminated: torch.Tensor  # [B] bool; a truncated episode's last transition is not terminated


def torch_dtype(dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype)).dtype


def choose_storage(nbytes: int, device: torch.device) -> torch.device:
    """Where to store ``nbytes`` of replay: the learner's GPU where it fits, else host memory.

    Host storage is not pinned: sampled rows are gathered into small buffers first, which is
    what the copy to the GPU reads (pinned ones for the uniform replay); and torch's pinned
    allocator rounds a request up to a power of two, so a 66 GB frame replay would ask for
    128 GiB of page-locked memory."""
    if device.type != "cuda":
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    return device if nbytes <= GPU_MEMORY_FRACTION * free else torch.device("cpu")


class UniformReplay:
    """A ring buffer of ``capacity`` transitions; the oldest are overwritten first."""

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], obs_dtype, action_shape: tuple[int, ...],
                 device: torch.device):
        self.capacity = capacity
        self.device = device
        shapes = {
            "obs": ((capacity, *obs_shape), torch_dtype(obs_dtype)),
            "actions": ((capacity, *action_shape), torch.float32),
            "rewards": ((capacity,), torch.float32),
            "next_obs": ((capacity, *obs_shape), torch_dtype(obs_dtype)),
            "terminated": ((capacity,), torch.bool),
        }
        self.nbytes = sum(math.prod(shape) * torch.empty(0, dtype=dtype).element_size() for shape, dtype in shapes.values())
        self.storage_device = choose_storage(self.nbytes, device)
        self.data: dict[str, torch.Tensor] = {}
        for name, (shape, dtype) in shapes.items():
            tensor = torch.empty(shape, dtype=dtype, device=self.storage_device)
            tensor.fill_(sentinel(dtype))  # reading unwritten rows shows up as NaN
            self.data[name] = tensor
        # host storage, GPU learner: gather into pinned memory, then one fast copy per field
        self.staging: dict[str, torch.Tensor] | None = None
        self.position = 0
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, transitions: Transitions) -> None:
        n = len(transitions.rewards)
        if n == 0:
            return
        skip = max(0, n - self.capacity)  # more than fits: only the newest survive anyway
        index = (self.position + torch.arange(skip, n)) % self.capacity
        index = index.to(self.storage_device)
        for f in fields(Transitions):
            value = getattr(transitions, f.name)[skip:]
            self.data[f.name].index_copy_(0, index, value.to(self.storage_device, self.data[f.name].dtype))
        self.position = (self.position + n) % self.capacity
        self.size = min(self.capacity, self.size + n)

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Transitions:
        """``batch_size`` transitions drawn uniformly with replacement, on the learner's device."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        index = torch.randint(self.size, (batch_size,), device=self.storage_device, generator=generator)
        if self.storage_device == self.device:
            return Transitions(**{name: tensor.index_select(0, index) for name, tensor in self.data.items()})
        if self.staging is None or len(self.staging["rewards"]) != batch_size:
            pinned = self.device.type == "cuda"
            self.staging = {name: torch.empty((batch_size, *t.shape[1:]), dtype=t.dtype, pin_memory=pinned)
                            for name, t in self.data.items()}
        out = {}
        for name, tensor in self.data.items():
            torch.index_select(tensor, 0, index, out=self.staging[name])
            out[name] = self.staging[name].to(self.device)  # blocking: the staging is reused next call
        return Transitions(**out)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The filled rows in age order (oldest first), so any capacity can load them, and
        where the oldest sits (``position``), so a buffer of the same capacity puts every row
        back where it was: sampling draws row indices, and a resumed run, its generator
        restored, then draws the transitions the uninterrupted run would."""
        if self.size < self.capacity:
            order = torch.arange(self.size)
        else:
            order = (self.position + torch.arange(self.capacity)) % self.capacity
        order = order.to(self.storage_device)
        return {**{name: tensor.index_select(0, order).cpu() for name, tensor in self.data.items()},
                "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        rows = Transitions(**{f.name: state[f.name] for f in fields(Transitions)})
        oldest_at = int(state.get("position", 0))  # checkpoints before it was saved: from row 0
        self.position = self.size = 0
        if len(rows.rewards) == self.capacity:  # full, and the same capacity: each row where it was
            self.position = oldest_at
        self.add(rows)


__all__ = ["Transitions", "UniformReplay", "choose_storage"]
