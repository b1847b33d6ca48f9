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


def clipped_rewards(rewards: torch.Tensor, limit: float) -> torch.Tensor:
    """Rewards clipped to [-limit, limit] for learning (Atari's sign-like clipping); 0 leaves them as they are."""
    return rewards.clamp(-limit, limit) if limit > 0 else rewards


def sample_categorical(logits: torch.Tensor) -> torch.Tensor:
    """One sample per row via the Gumbel-max trick (one kernel, no normalisation)."""
    noise = torch.empty_like(logits).exponential_().log_()
    return (logits - noise).argmax(dim=-1)


# ------------------------------------------------------------------ non-finite updates
# An update() whose loss or gradient is NaN/inf must not touch the weights: one bad batch
# would otherwise poison the network for good. Every algorithm calls step_if_finite where
# it would call optimizer.step() and reports the steps it skipped under SKIPPED_STEPS; the
# runner counts updates with skipped steps (diag/nonfinite_updates) and stops the run after
# max_nonfinite_updates of them in a row (NonFiniteUpdates).

SKIPPED_STEPS = "diag/skipped_steps"  # update() tag: optimizer steps it skipped (0-d tensor); the runner consumes it


class NonFiniteUpdates(RuntimeError):
    """Too many updates in a row had a NaN/inf loss or gradient; the message says what to try."""


def step_if_finite(optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_norm: torch.Tensor | None = None) -> bool:
    """``optimizer.step()`` if ``loss`` and the gradient norm are finite; otherwise clear the
    gradients and leave weights and optimizer state untouched. Returns whether it stepped.

    Call it after ``loss.backward()`` with the norm ``clip_grad_norm_`` returned (computed
    here when not given). One host sync per call.
    """
    if grad_norm is None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf")) if params else torch.zeros((), device=loss.device)
    if bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)):
        optimizer.step()
        return True
    optimizer.zero_grad(set_to_none=True)
    return False


def clipped_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, net: torch.nn.Module, max_grad_norm: float,
                 flow) -> tuple[torch.Tensor, bool]:
    """One optimizer step on ``loss`` for ``net``: fresh gradients (seen by the gradient-flow
    diagnostics ``flow``), global-norm clipping at ``max_grad_norm`` (0: none), then
    :func:`step_if_finite`. Returns (the gradient norm before clipping, whether it stepped)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    flow.record_gradients()
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm if max_grad_norm > 0 else float("inf"))
    with flow.record_step():
        stepped = step_if_finite(optimizer, loss, grad_norm)
    return grad_norm, stepped
