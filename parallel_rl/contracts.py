"""The interfaces the runtime is built on, written down once.

    Policy       what acting needs and nothing more: the network and its acting state
                 (exploration rate, observation statistics, warm-up flag). Actor processes
                 build a Policy, never an Algorithm; published weights are exactly its state.
    Algorithm    owns a Policy plus everything learning needs (critics, targets, optimizers,
                 replay); ``update(batch) -> UpdateResult``. One file in ``algos/`` that
                 declares its config section and registers itself (registry.py).
    BatchSource  where batches come from: inline (K = 0) or actor processes; the learner
                 loop cannot tell them apart.

A ``Batch`` is what every algorithm learns from; a ``Delivery`` is a batch plus what the
learner logs about how it was produced.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from .config import AlgoConfig, Config
    from .envs import EnvSpec


@dataclass
class Batch:
    """A time-major rollout of T steps from N environments.

    ``autoreset[t, n]`` marks steps that only reset env n after its episode ended (the
    action was ignored, the reward is 0): they are not transitions and carry no loss.
    """

    obs: torch.Tensor  # [T, N, *obs_shape], native dtype (uint8 frames stay uint8)
    actions: torch.Tensor  # [T, N]
    behaviour_log_probs: torch.Tensor  # [T, N]: log pi_behaviour(a_t | s_t) of the acting policy
    behaviour_values: torch.Tensor  # [T, N]: the acting pass's value of s_t (Policy.act_and_value), NaN if none
    rewards: torch.Tensor  # [T, N] float32, unclipped
    terminated: torch.Tensor  # [T, N] bool
    truncated: torch.Tensor  # [T, N] bool
    autoreset: torch.Tensor  # [T, N] bool
    next_obs: torch.Tensor  # [N, *obs_shape]: the observation after the last step
    # [M] flat indices (into T * N) of the steps that are transitions, found on the host before
    # the batch went to the device: finding them there would stall the learner on a GPU until
    # the copy lands (nonzero's size is data-dependent). None: found from ``autoreset`` on use.
    transition_indices: torch.Tensor | None = None
    # [T + 1], on the host: how many of ``transition_indices`` come before step t, so that a
    # batch of some of the steps (``steps``) takes its own indices without asking the device
    transitions_before: tuple[int, ...] | None = None

    @classmethod
    def from_arrays(cls, arrays: dict, device: torch.device) -> Batch:
        """From numpy arrays or CPU tensors (pinned ones copy without blocking)."""
        non_blocking = device.type == "cuda"
        tensors = {f.name: torch.as_tensor(arrays[f.name]) for f in fields(cls) if f.name not in HOST_FOUND}
        transitions = _transition_indices(tensors["autoreset"])
        before = (0, *torch.cumsum((~tensors["autoreset"]).sum(1), 0).tolist())
        if non_blocking:
            transitions = transitions.pin_memory()  # a pageable copy would wait for the device's queue
        return cls(**{name: t.to(device, non_blocking=non_blocking) for name, t in tensors.items()},
                   transition_indices=transitions.to(device, non_blocking=non_blocking), transitions_before=before)

    def transitions(self) -> torch.Tensor:
        """Flat [T * N] indices of the steps that are transitions (not auto-resets)."""
        if self.transition_indices is not None:
            return self.transition_indices
        return _transition_indices(self.autoreset)

    @property
    def num_steps(self) -> int:
        return self.rewards.numel()

    @property
    def horizon(self) -> int:
        return self.rewards.shape[0]

    def steps(self, start: int, stop: int) -> Batch:
        """Steps ``start:stop`` of every env, a batch in their own right (views, no copy), with
        their transitions' indices where this batch knows where they lie."""
        following = self.obs[stop] if stop < self.horizon else self.next_obs
        parts = {f.name: getattr(self, f.name)[start:stop] for f in fields(self) if f.name not in ("next_obs", *HOST_FOUND)}
        if self.transition_indices is None or self.transitions_before is None:
            return Batch(**parts, next_obs=following)
        first, last = self.transitions_before[start], self.transitions_before[stop]
        return Batch(**parts, next_obs=following,
                     transition_indices=self.transition_indices[first:last] - start * self.rewards.shape[1],
                     transitions_before=tuple(count - first for count in self.transitions_before[start : stop + 1]))


# the fields found on the host from the others, not copied from the rollout's arrays
HOST_FOUND = ("transition_indices", "transitions_before")


def _transition_indices(autoreset: torch.Tensor) -> torch.Tensor:
    return (~autoreset).flatten().nonzero().squeeze(1)


class Policy(nn.Module):
    """The acting half of an algorithm: an ``nn.Module`` whose parameters and buffers are
    everything acting needs, so ``state_dict()`` is exactly what the learner publishes to
    actor processes and what evaluation loads.

    Acting state that changes during training (an exploration rate, observation
    statistics, a warm-up flag) lives in buffers: it reaches actor processes with the
    weights, at the same version.
    """

    def act(self, obs: torch.Tensor, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions for a batch of observations and their log-probabilities (or log-densities)
        under the acting policy; ``greedy`` takes the most probable action (log-probability
        as the policy defines it, 0 where it is deterministic). Random numbers should come
        from ``acting_noise`` (row i from the stream of the call's i-th env): then an env
        acts the same however envs are split among calls, processes and ranks. Draws from
        torch's generator (``Categorical.sample``) still reproduce a seeded run, since acting
        seeds that generator per call, but change when the split does."""
        raise NotImplementedError

    def act_and_value(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``act`` plus each observation's value from the same forward pass (V(s) of an
        actor-critic, max_a Q(s, a) of a Q-network), which an on-policy learner reuses instead
        of a second pass over the batch; NaN where the policy has no value (the default)."""
        actions, log_probs = self.act(obs)
        return actions, log_probs, torch.full((obs.shape[0],), math.nan, device=obs.device)

    def prepare_evaluation(self, cfg: Config) -> None:
        """Switch to evaluation's acting state (e.g. ``algo.eval_epsilon``); nothing by default."""


# An update of several optimizer steps logs the mean of their gradient norms as ``diag/grad_norm``,
# and may give the largest under this key: the logged ``diag/grad_norm_max`` is its largest since
# the last write (a mean of 16 minibatch steps shows a tenfold spike in one of them as 1.6-fold).
# No tag of its own, so no tag's form
GRAD_NORM_STEP_MAX = "_grad_norm_of_the_largest_step"


@dataclass
class UpdateResult:
    """What one ``Algorithm.update`` reports.

    ``metrics``: TensorBoard tags to 0-d tensors (``losses/*``, ``diag/*``, ``charts/*``);
    tags an update does not produce keep their last logged value (:data:`GRAD_NORM_STEP_MAX`
    is no tag: it feeds ``diag/grad_norm_max``). ``skipped_steps``: the
    optimizer steps of this update skipped because a loss or gradient was NaN/inf (weights
    and optimizer state untouched); a tensor, so no host sync happens until it is read.
    """

    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped_steps: torch.Tensor | float = 0.0

    @property
    def skipped(self) -> bool:
        """Whether any optimizer step was skipped (reading it syncs with the device)."""
        return float(self.skipped_steps) > 0


class Algorithm(Protocol):
    """What the runner, the actor processes and evaluation need of an algorithm.

    Class attributes declare it: ``name`` (``algo.name``), ``config_class`` (its
    ``algo:`` section, a subclass of ``config.AlgoConfig``), ``max_policy_lag`` (how many
    updates old the acting weights may be: 0 without an off-policy correction, None for
    unbounded) and ``continuous_actions``.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[AlgoConfig]]
    max_policy_lag: ClassVar[int | None]
    continuous_actions: ClassVar[bool]

    @classmethod
    def make_policy(cls, spec: EnvSpec, cfg: Config) -> Policy:
        """A fresh Policy for these observations and actions (on the CPU); actor processes and
        evaluation call this without building the algorithm."""
        ...

    def __init__(self, spec: EnvSpec, cfg: Config, device: torch.device) -> None: ...

    def policy(self) -> Policy:
        """The Policy this algorithm learns (on the learner's device)."""
        ...

    def update(self, batch: Batch) -> UpdateResult:
        """Learn from one rollout (on-policy: its gradient steps; off-policy: store it, then step)."""
        ...

    def set_progress(self, fraction: float) -> float:
        """Training progress in [0, 1] (schedules: LR, exploration); returns the LR now in use."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Delivery:
    """One batch plus what the learner logs about how it was produced."""

    batch: Batch
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    lag: list[int] = field(default_factory=list)
    producers: list[int] = field(default_factory=list)  # pids of the processes that stepped the envs
    # the seconds the steps taken need at the env library's own speed, and the wall-clock
    # they took, summed over the producers (runtime.rollout): their ratio is perf/env_efficiency
    env_busy_s: float = 0.0
    env_wall_s: float = 0.0

    def split(self, length: int) -> list[Delivery]:
        """Consecutive pieces of at most ``length`` steps per env; the first carries what the
        whole delivery reports (episodes, timings, producers), so nothing is counted twice.
        Each piece has its own lag: the learner publishes after each, so piece j is learned j
        versions after the first."""
        horizon = self.batch.horizon
        if length >= horizon:
            return [self]
        pieces = [Delivery(self.batch.steps(start, min(start + length, horizon))) for start in range(0, horizon, length)]
        first = pieces[0]
        first.returns, first.lengths, first.timings = self.returns, self.lengths, self.timings
        first.producers = self.producers
        first.env_busy_s, first.env_wall_s = self.env_busy_s, self.env_wall_s
        for later, piece in enumerate(pieces):
            piece.lag = [lag + later for lag in self.lag]
        return pieces


class BatchSource(Protocol):
    """Batches for the learner loop, from environments stepped inline or in actor processes."""

    mode: ClassVar[str]  # "synchronous" (inline) or "asynchronous" (actor processes)
    # steps per env of each piece the learner updates on and publishes after: the source's own
    # (its rank's envs), so the learner cuts deliveries where acting expects the versions to change
    segment_length: int

    def next_batch(self, version: int, should_stop: Callable[[], bool]) -> Delivery | None:
        """The batch for update ``version`` (None when stopped while waiting for it)."""
        ...

    def published(self, version: int) -> None:
        """The learner's policy now has ``version``: actor processes may act with it."""
        ...

    def diagnostics(self) -> dict[str, float]:
        """Source-specific scalars to log (``diag/queue_fill``, ``diag/actor_restarts``); may be empty."""
        ...

    def close(self) -> None: ...


__all__ = ["Algorithm", "Batch", "BatchSource", "Delivery", "Policy", "UpdateResult"]
