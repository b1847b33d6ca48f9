"""What every algorithm sees and offers: batches in, metrics out; no processes."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    """A time-major rollout of T steps from N environments.

    ``autoreset[t, n]`` marks steps that only reset env n after its episode ended (the
    action was ignored, the reward is 0): they are not transitions and carry no loss.
    """

    obs: torch.Tensor  # [T, N, *obs_shape], native dtype (uint8 frames stay uint8)
    actions: torch.Tensor  # [T, N]
    behaviour_log_probs: torch.Tensor  # [T, N]: log pi_behaviour(a_t | s_t) of the acting policy
    rewards: torch.Tensor  # [T, N] float32, unclipped
    terminated: torch.Tensor  # [T, N] bool
    truncated: torch.Tensor  # [T, N] bool
    autoreset: torch.Tensor  # [T, N] bool
    next_obs: torch.Tensor  # [N, *obs_shape]: the observation after the last step

    @classmethod
    def from_arrays(cls, arrays: dict, device: torch.device) -> Batch:
        """From numpy arrays or CPU tensors (pinned ones copy without blocking)."""
        non_blocking = device.type == "cuda"
        return cls(**{f.name: torch.as_tensor(arrays[f.name]).to(device, non_blocking=non_blocking) for f in fields(cls)})

    @property
    def num_steps(self) -> int:
        return self.rewards.numel()


def sample_categorical(logits: torch.Tensor) -> torch.Tensor:
    """One sample per row via the Gumbel-max trick (one kernel, no normalisation)."""
    noise = torch.empty_like(logits).exponential_().log_()
    return (logits - noise).argmax(dim=-1)
