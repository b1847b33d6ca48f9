"""QR-DQN (Dabney et al. 2018) with Dopamine's defaults; the minibatch size is the knob of
"Small Batch Deep RL" (Obando-Ceron et al. 2023): with n-step returns, 8 beats 32.

Off-policy in the same runtime as PAAC: ``update(batch)`` stores the rollout in a frame
replay (``replay/frames.py``: each Atari frame once, stacks and n-step returns rebuilt at
sampling time; auto-reset steps are not transitions). Once the replay holds
``algo.warmup_steps`` agent steps it takes ``algo.utd_ratio`` gradient steps per new
transition (0.25: one every 4 agent steps; fractions carry over), each on
``replay.minibatch_size`` sampled transitions:

  target   T theta_j = G_t^(n) + gamma^n (1 - terminated) theta'_j(s_{t+n}, a*),
           a* = argmax_a mean_j theta'_j(s_{t+n}, a)         (theta': the target network)
  loss     sum_i mean_j rho^kappa_{tau_i}(T theta_j - theta_i(s_t, a_t)),  tau_i = (2i + 1) / 2N

with the target network copied from the online one every ``algo.target_period`` agent
steps. Rewards are clipped for learning (``algo.reward_clip``). The actors are
epsilon-greedy: epsilon is 1 during the warm-up, then decays linearly over
``algo.epsilon_decay_steps`` (``exploration: linear``), or every env keeps its own
(``exploration: per_actor``, Ape-X). Epsilon lives in a buffer of ``.net``, so actor
processes receive it with the weights. The replay is not checkpointed: after a resume it
refills for ``algo.warmup_steps`` agent steps before learning continues.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch

from .. import distributed
from ..config import (
    AlgoConfig,
    Config,
    ConfigError,
    check_non_negative,
    check_positive_int,
    setting,
)
from ..contracts import GRAD_NORM_STEP_MAX, Batch, UpdateResult
from ..diagnostics import GradientFlow
from ..envs import EnvSpec
from ..nn.quantile import QuantileQNetwork
from ..optim import anneal_lr, make_optimizer
from ..registry import register
from ..replay.frames import FrameReplay
from .base import (
    EpsilonGreedyConfig,
    ReplayCadenceConfig,
    RewardClipConfig,
    clipped_rewards,
    clipped_step,
)
from .policies import EpsilonGreedyPolicy


def quantile_midpoints(num_quantiles: int, device=None) -> torch.Tensor:
    """tau_i = (2i + 1) / 2N: the quantile levels whose values minimise the 1-Wasserstein error."""
    return (torch.arange(num_quantiles, dtype=torch.float32, device=device) + 0.5) / num_quantiles


def quantile_huber_loss(quantiles: torch.Tensor, targets: torch.Tensor, kappa: float = 1.0) -> torch.Tensor:
    """Per-sample quantile-Huber loss ``sum_i mean_j rho^kappa_{tau_i}(targets_j - quantiles_i)``.

    ``quantiles`` [B, N] are the online values at levels tau_i = (2i + 1) / 2N, ``targets``
    [B, N'] samples of the target distribution. ``rho^kappa_tau(u) = |tau - 1{u < 0}| L_kappa(u) / kappa``
    with the Huber loss ``L_kappa(u) = u^2 / 2`` for ``|u| <= kappa``, ``kappa (|u| - kappa / 2)``
    otherwise. Returns [B].
    """
    errors = targets.unsqueeze(1) - quantiles.unsqueeze(2)  # [B, N, N']: target j minus quantile i
    abs_errors = errors.abs()
    huber = torch.where(abs_errors <= kappa, 0.5 * errors.pow(2), kappa * (abs_errors - 0.5 * kappa))
    taus = quantile_midpoints(quantiles.shape[1], quantiles.device).view(1, -1, 1)
    weight = (taus - (errors.detach() < 0).to(errors.dtype)).abs()
    return (weight * huber / kappa).mean(2).sum(1)


@dataclass
class QRDQNConfig(RewardClipConfig, EpsilonGreedyConfig, ReplayCadenceConfig, AlgoConfig):
    num_quantiles: int = setting("Quantiles of the return distribution per action (Dopamine: 200).", 200)
    kappa: float = setting("Threshold of the quantile-Huber loss (quadratic below, linear above).", 1.0)
    n_step: int = setting("Steps of the multi-step return, computed by the replay at sampling time (Dopamine: 3).", 3)
    target_period: int = setting("Agent steps between hard copies of the online network into the target network (Dopamine: "
                                 "8000), counted as gradient steps (x algo.utd_ratio): on N ranks, N x this many agent steps of all ranks.", 8000)
    epsilon_decay_steps: int = setting("Agent steps after the warm-up over which epsilon decays linearly from epsilon_start to "
                                       "epsilon_end (Dopamine: 250000).", 250_000)
    exploration: Literal["linear", "per_actor"] = setting(
        "linear (one epsilon for all envs, on the schedule) or per_actor (Ape-X: env i of the n stepped together keeps "
        "epsilon_base^(1 + epsilon_alpha i / (n - 1))); both act uniformly at random during the warm-up.", "linear")
    epsilon_base: float = setting("Exploration per_actor: the largest epsilon (Ape-X: 0.4).", 0.4)
    epsilon_alpha: float = setting("Exploration per_actor: the exponent's spread (Ape-X: 7, down to 0.4^8 = 0.00066).", 7.0)

    refused = {"loss_scale": "its loss is not scaled: scale the learning rate (optim.lr) instead"}

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        self.check_epsilons()
        self.check_cadence()
        check_positive_int({"algo.num_quantiles": self.num_quantiles, "algo.n_step": self.n_step,
                            "algo.target_period": self.target_period})
        self.check_reward_clip()
        check_non_negative({"algo.epsilon_decay_steps": self.epsilon_decay_steps,
                            "algo.epsilon_alpha": self.epsilon_alpha})
        if self.kappa <= 0:
            raise ConfigError(f"algo.kappa = {self.kappa} is invalid: the quantile-Huber threshold must be positive (Dopamine: 1).")
        if not 0.0 < self.epsilon_base <= 1.0:
            raise ConfigError(f"algo.epsilon_base = {self.epsilon_base} is invalid: an exploration rate in (0, 1] (Ape-X: 0.4).")
        replay = cfg.replay
        rows, needed = replay.capacity // cfg.actors.num_envs, self.rollout_length + cfg.env.frame_stack + self.n_step
        if rows < needed:
            raise ConfigError(
                f"replay.capacity = {replay.capacity} is too small: it holds {replay.capacity} // actors.num_envs "
                f"({cfg.actors.num_envs}) = {rows} agent steps per env, and one rollout plus a frame stack and an n-step window "
                f"need algo.rollout_length ({self.rollout_length}) + env.frame_stack ({cfg.env.frame_stack}) + algo.n_step "
                f"({self.n_step}) = {needed}. Raise replay.capacity to at least {needed * cfg.actors.num_envs}.")
        held = rows * cfg.actors.num_envs  # whole steps of every env: the replay's rows
        if self.warmup_steps > held:
            raise ConfigError(f"algo.warmup_steps = {self.warmup_steps} exceeds the {held} agent steps the replay holds "
                              f"(replay.capacity {replay.capacity} // actors.num_envs {cfg.actors.num_envs} = {rows} steps "
                              f"per env): learning would never start. Lower algo.warmup_steps or raise replay.capacity.")
        if replay.save_with_checkpoint:
            raise ConfigError("replay.save_with_checkpoint = true is supported by algo.name = 'sac' only: qrdqn refills its "
                              "frame replay for algo.warmup_steps agent steps after a resume. Set replay.save_with_checkpoint=false.")
        self.check_warmup_ends(cfg)


@register
class QRDQN:
    name = "qrdqn"
    config_class: type[AlgoConfig] = QRDQNConfig
    max_policy_lag: int | None = None  # replay is off-policy: any lag is fine
    continuous_actions = False

    @classmethod
    def make_policy(cls, spec: EnvSpec, cfg: Config) -> EpsilonGreedyPolicy:
        algo = cfg.algo
        return EpsilonGreedyPolicy(QuantileQNetwork(spec, cfg.model, algo.num_quantiles), 1.0,
                                   per_actor_alpha=algo.epsilon_alpha if algo.exploration == "per_actor" else None)

    def __init__(self, spec: EnvSpec, cfg: Config, device: torch.device):
        self.cfg, self.device = cfg, device
        algo = cfg.algo
        self.acting = self.make_policy(spec, cfg).to(device)
        self.net = self.acting.net
        self.target_net = copy.deepcopy(self.net).requires_grad_(False)
        self.optimizer = make_optimizer(self.net.parameters(), cfg)
        self.flow = GradientFlow(self.net, cfg.logging.diag_interval)
        self.replay = FrameReplay(
            spec.obs_shape, spec.obs_dtype, cfg.env.frame_stack if spec.is_atari else 1, cfg.actors.num_envs,
            cfg.replay.capacity, algo.n_step, algo.gamma, device, prioritized=cfg.replay.prioritized,
            priority_exponent=cfg.replay.priority_exponent, importance_exponent=cfg.replay.importance_exponent,
            seed=cfg.seed,
        )
        # hard target updates every target_period agent steps = this many gradient steps
        self.target_every = max(1, round(algo.target_period * algo.utd_ratio))
        self.gradient_steps = 0
        self.update_credit = 0.0

    def policy(self) -> EpsilonGreedyPolicy:
        return self.acting

    def epsilon_at(self, step: float) -> float:
        """1 during the warm-up; then the linear schedule, or per-actor's base epsilon."""
        algo = self.cfg.algo
        if step < algo.warmup_steps:
            return 1.0
        if algo.exploration == "per_actor":
            return algo.epsilon_base
        decayed = min(1.0, (step - algo.warmup_steps) / algo.epsilon_decay_steps) if algo.epsilon_decay_steps else 1.0
        return algo.epsilon_start + decayed * (algo.epsilon_end - algo.epsilon_start)

    # -------------------------------------------------------------- learning
    def set_progress(self, fraction: float) -> float:
        """Moves epsilon along its schedule (in agent steps); returns the LR now in use."""
        self.acting.epsilon.fill_(self.epsilon_at(fraction * self.cfg.total_steps))
        return anneal_lr([self.optimizer], self.cfg, fraction)

    def update(self, batch: Batch) -> UpdateResult:
        algo = self.cfg.algo
        replay = self.replay
        rewards = clipped_rewards(batch.rewards, algo.reward_clip)
        replay.add(batch.obs, batch.actions, rewards, batch.terminated, batch.truncated, batch.autoreset, batch.next_obs)
        metrics = {
            "charts/epsilon": self.acting.epsilon.clone(),
            "diag/replay_size": torch.tensor(float(len(replay))),
            "diag/replay_breaks": replay.breaks.float(),
        }
        # this rank's replay against its share of the warm-up, which counts all ranks' agent steps (as epsilon's does)
        ready = len(replay) >= distributed.rank_share(algo.warmup_steps) and replay.can_sample()
        if ready:
            self.update_credit += batch.transitions().numel() * algo.utd_ratio
        steps = distributed.fewest(int(self.update_credit) if ready else 0)  # replicas step in lockstep
        self.update_credit -= steps
        if steps == 0:
            return UpdateResult(metrics)
        self.flow.begin_update()
        stats = [self.gradient_step() for _ in range(steps)]
        metrics.update({tag: torch.stack([s[tag] for s, _ in stats]).mean() for tag in stats[0][0]})
        metrics[GRAD_NORM_STEP_MAX] = torch.stack([s["diag/grad_norm"] for s, _ in stats]).max()
        metrics["diag/gradient_steps"] = torch.tensor(float(self.gradient_steps))
        metrics.update(self.flow.results())
        return UpdateResult(metrics, skipped_steps=(~torch.stack([stepped for _, stepped in stats])).sum().float())

    def gradient_step(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One gradient step on a sampled minibatch: (its metrics, whether the optimizer stepped)."""
        algo = self.cfg.algo
        sample = self.replay.sample(self.cfg.replay.minibatch_size)
        rows = torch.arange(len(sample.actions), device=self.device)
        with self.flow.capture():
            quantiles = self.net(sample.obs)[rows, sample.actions]  # [B, N]
        with torch.no_grad():
            next_quantiles = self.target_net(sample.next_obs)
            best = next_quantiles.mean(-1).argmax(-1)
            targets = sample.returns.unsqueeze(1) + sample.discounts.unsqueeze(1) * next_quantiles[rows, best]
        per_sample = quantile_huber_loss(quantiles, targets, algo.kappa)
        loss = (per_sample * sample.weights).mean()

        # a NaN/inf loss or gradient skips the step (counted by the runner) rather than
        # poisoning the weights and, through the priorities, the replay
        grad_norm, stepped = clipped_step(self.optimizer, loss, self.net, algo.max_grad_norm, self.flow)
        if self.replay.prioritized:
            self.replay.update_priorities(sample.index, per_sample.detach(), stepped)
        self.gradient_steps += 1
        if self.gradient_steps % self.target_every == 0:
            self.target_net.load_state_dict(self.net.state_dict())
        return {
            "losses/quantile_huber": loss.detach(),
            "diag/grad_norm": grad_norm.detach(),
            "diag/value_mean": quantiles.detach().mean(),
        }, stepped

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "policy": self.acting.state_dict(),
            "target_net": self.target_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "gradient_steps": self.gradient_steps,
            "update_credit": self.update_credit,
        }

    def load_state_dict(self, state: dict) -> None:
        self.acting.load_state_dict(state["policy"])
        self.target_net.load_state_dict(state["target_net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gradient_steps = int(state["gradient_steps"])
        self.update_credit = float(state["update_credit"])
