"""What the algorithms share: config sections, reward clipping, finite-only optimizer steps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import distributed
from ..config import (
    Config,
    ConfigError,
    algorithm_class,
    check_non_negative,
    check_positive_int,
    check_unit_interval,
    setting,
)


def policy_lag_bound(cfg: Config) -> int | None:
    """How many updates old the weights an actor process acts with may be (None: unbounded).

    ``actors.max_policy_lag`` when set (>= 0), else the algorithm's own: 0 for those without
    an off-policy correction (PAAC, PPO, PQN: actor processes wait for the newest weights, so K >= 1
    is the same algorithm as K = 0), unbounded for IMPALA and the replay-based ones.
    """
    if cfg.actors.max_policy_lag >= 0:
        bound = cfg.actors.max_policy_lag
        if cfg.actors.deterministic_lag and bound < 1:
            raise ConfigError("actors.deterministic_lag = true acts with exactly the previous policy version, a lag of 1, "
                              f"but actors.max_policy_lag = {bound} allows none. Set actors.max_policy_lag to 1 or more "
                              "(or -1, the algorithm's own bound), or drop actors.deterministic_lag.")
        return bound
    if cfg.actors.deterministic_lag:
        return None  # asked for explicitly: the lag is exactly 1
    return algorithm_class(cfg.algo.name).max_policy_lag


@dataclass
class RewardClipConfig:
    """The key of the algorithms that clip rewards for learning (all but SAC, which scales them)."""

    reward_clip: float = setting("Clip rewards to [-c, c] for learning (returns are logged unclipped); 0 disables it.", 0.0)

    def check_reward_clip(self) -> None:
        check_non_negative({"algo.reward_clip": self.reward_clip})


@dataclass
class EpsilonGreedyConfig:
    """Keys of the algorithms that act epsilon-greedily on Q-values (PQN, QR-DQN)."""

    epsilon_start: float = setting("Exploration rate of the epsilon-greedy actors at the start (QR-DQN: after the warm-up).", 1.0)
    epsilon_end: float = setting("Exploration rate after the linear decay (Dopamine's QR-DQN: 0.01).", 0.005)
    eval_epsilon: float = setting("Exploration rate when evaluating (Dopamine's 0.001); `eval --greedy` takes 0.", 0.001)

    def check_epsilons(self) -> None:
        check_unit_interval({"algo.epsilon_start": self.epsilon_start, "algo.epsilon_end": self.epsilon_end,
                             "algo.eval_epsilon": self.eval_epsilon})


@dataclass
class ReplayCadenceConfig:
    """Keys of the replay-based algorithms (SAC, QR-DQN): how much data before learning, how much learning per datum."""

    utd_ratio: float = setting("Gradient steps per new transition, all actors together (update-to-data ratio; SimbaV2: 2; "
                               "QR-DQN: 0.25, Dopamine's update every 4 agent steps). Fractions carry over between updates. "
                               "With several ranks, per transition of each rank: every step averages the ranks' minibatches.", 2.0)
    warmup_steps: int = setting("Transitions collected with uniformly random actions before the first gradient step, all ranks "
                                "together (SimbaV2: 5000; QR-DQN counts agent steps in its replay, Dopamine: 20000).", 5000)
    publish_interval: int = setting(
        "Gradient steps between weight publications to acting: acting collects replay with weights at most about this "
        "many gradient steps old (never less than one agent step of every env; algo.rollout_length stays the transfer size "
        "of actor processes). 8: close to the papers' one-env loops (SimbaV2 publishes after every 2), for a fraction of "
        "their per-step overhead.", 8)

    def check_cadence(self) -> None:
        if self.utd_ratio <= 0:
            raise ConfigError(f"algo.utd_ratio = {self.utd_ratio} is invalid: gradient steps per transition must be positive (SimbaV2: 2).")
        check_non_negative({"algo.warmup_steps": self.warmup_steps})
        check_positive_int({"algo.publish_interval": self.publish_interval})

    def check_warmup_ends(self, cfg: Config) -> None:
        """Last of the algorithm's checks: the others name what is wrong with the keys themselves."""
        if self.warmup_steps >= cfg.total_steps:
            raise ConfigError(f"algo.warmup_steps = {self.warmup_steps:,} is not below total_steps = {cfg.total_steps:,}: the run "
                              "would end before its first gradient step, having learned nothing. Raise --steps above "
                              "the warm-up, or lower algo.warmup_steps.")

    def segment_length(self, num_envs: int) -> int:
        """The agent steps per env that owe about ``publish_interval`` gradient steps, within [1, rollout_length]."""
        return max(1, min(self.rollout_length, math.ceil(self.publish_interval / (self.utd_ratio * num_envs))))


def minibatch_count_fits(cfg: Config, count: int) -> None:
    """Refuse more minibatches than one update has samples (PPO, PQN)."""
    if count > cfg.batch_size:
        raise ConfigError(
            f"algo.num_minibatches = {count} exceeds the samples of one update: actors.num_envs "
            f"({cfg.actors.num_envs}) x algo.rollout_length ({cfg.algo.rollout_length}) = {cfg.batch_size}. "
            f"Use at most {cfg.batch_size} minibatches."
        )


def clipped_rewards(rewards: torch.Tensor, limit: float) -> torch.Tensor:
    """Rewards clipped to [-limit, limit] for learning (Atari's sign-like clipping); 0 leaves them as they are."""
    return rewards.clamp(-limit, limit) if limit > 0 else rewards


# ------------------------------------------------------------------ non-finite updates
# An update() whose loss or gradient is NaN/inf must not touch the weights: one bad batch
# would otherwise poison the network for good. Every algorithm calls step_if_finite where
# it would call optimizer.step() and reports the steps it skipped in
# UpdateResult.skipped_steps; the runner counts updates with skipped steps
# (diag/nonfinite_updates) and stops the run after max_nonfinite_updates of them in a row
# (NonFiniteUpdates).


class NonFiniteUpdates(RuntimeError):
    """Too many updates in a row had a NaN/inf loss or gradient; the message says what to try."""


def step_if_finite(optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_norm: torch.Tensor | None = None) -> torch.Tensor:
    """``optimizer.step()`` if ``loss`` and the gradient norm are finite; otherwise leave
    weights and optimizer state untouched. Returns whether it stepped, as a 0-d bool tensor
    on the loss's device.

    Call it after ``loss.backward()`` with the norm ``clip_grad_norm_`` returned (computed
    here when not given). An optimizer that takes GradScaler's ``found_inf`` (torch's fused
    Adam: ``perf.optimizer_kernel``) skips on the device, with no host sync; any other syncs
    once to decide.
    """
    if grad_norm is None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf")) if params else torch.zeros((), device=loss.device)
    finite = distributed.all_ranks(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))  # ranks step alike
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.grad_scale, optimizer.found_inf = None, (~finite).to(torch.float32)
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
        return finite
    if bool(finite):
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    return finite


def clipped_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, net: torch.nn.Module, max_grad_norm: float,
                 flow) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on ``loss`` for ``net``: fresh gradients (seen by the gradient-flow
    diagnostics ``flow``), global-norm clipping at ``max_grad_norm`` (0: none), then
    :func:`step_if_finite`. Returns (the gradient norm before clipping, whether it stepped: a 0-d bool tensor)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(net.parameters())  # before clipping: the clip of the whole batch's gradient
    flow.record_gradients()
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), max_grad_norm if max_grad_norm > 0 else float("inf"))
    with flow.record_step():
        stepped = step_if_finite(optimizer, loss, grad_norm)
    return grad_norm, stepped
