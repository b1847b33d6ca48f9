"""PPO: proximal policy optimisation with the clipped surrogate (Schulman et al. 2017).

Every rollout of ``n_envs x T`` steps is learnt from for ``update_epochs`` passes of
``num_minibatches`` minibatches each:

    ratio = pi(a|s) / mu(a|s)            mu: the policy that acted
    L     = -min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) - beta H(pi) + c_v (R - V)^2

with GAE(lambda) advantages A and returns R computed once per rollout. In asynchronous
mode mu lags the learner by a few versions; the clip bounds how far the update trusts
those samples. Auto-reset steps carry no transition and are left out of every loss and
of the advantage normalisation. Network, acting, LR annealing and state are PAAC's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import distributed
from ..config import Config, ConfigError, check_positive_int, check_unit_interval, setting
from ..contracts import GRAD_NORM_STEP_MAX, Batch, UpdateResult
from ..envs import EnvSpec
from ..registry import register
from .base import clipped_rewards, clipped_step, minibatch_count_fits, policy_lag_bound
from .paac import PAAC, PAACConfig
from .returns import gae


def acting_values_are_current(cfg: Config) -> bool:
    """Whether every rollout is acted with the weights the update it feeds starts from (no
    policy lag), so the values of its acting pass are the update's own."""
    return policy_lag_bound(cfg) == 0


def values_before_update(batch: Batch, evaluate, reuse_acting: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat [T * N] values of the batch's observations and the [N] values of its next ones
    under the weights the update starts from; ``evaluate`` maps observations to values.

    ``reuse_acting`` takes the first from the acting pass (``Batch.behaviour_values``) and
    runs only the N next observations, where a second pass over all T * N would cost about
    a tenth of an Atari PPO iteration on a CPU; with policy lag they would be stale.

    The values are copied out of ``evaluate``'s output: compiled with CUDA graphs
    (``perf.cuda_graphs``), that output lives in the graphs' memory pool, which the update's
    own compiled passes reuse while these values are still read (value clipping)."""
    if reuse_acting:
        return batch.behaviour_values.flatten(), evaluate(batch.next_obs).clone()
    values = evaluate(torch.cat([batch.obs.flatten(0, 1), batch.next_obs], dim=0)).clone()
    return values[: batch.num_steps], values[batch.num_steps :]


def minibatches(indices: torch.Tensor, count: int) -> list[torch.Tensor]:
    """``indices`` shuffled and split into ``count`` near-equal minibatches (``count`` at most
    ``len(indices)``: from :func:`minibatch_count`)."""
    return list(indices[torch.randperm(len(indices), device=indices.device)].tensor_split(count))


def minibatch_count(valid: torch.Tensor, wanted: int) -> int:
    """Minibatches per epoch: ``wanted``, or fewer where fewer transitions are left to learn
    from (0: none). With several ranks, the fewest of every rank's: each minibatch's
    gradient is averaged across the ranks, so all of them take the same number of steps."""
    return distributed.fewest(min(wanted, len(valid)))


@dataclass
class EpochsConfig:
    """Keys of the algorithms that learn from each rollout in epochs of minibatches (PPO, PQN)."""

    td_lambda: float = setting("lambda of the lambda-returns: PPO's GAE(lambda) (0.95), PQN's Q(lambda) (0.65).", 0.95)
    update_epochs: int = setting("Passes over each batch of rollouts.", 4)
    num_minibatches: int = setting("Minibatches per pass (each holds actors.num_envs x algo.rollout_length / this many samples).", 4)

    def check_epochs(self, cfg: Config) -> None:
        check_positive_int({"algo.update_epochs": self.update_epochs, "algo.num_minibatches": self.num_minibatches})
        check_unit_interval({"algo.td_lambda": self.td_lambda})
        minibatch_count_fits(cfg, self.num_minibatches)


@dataclass
class PPOConfig(EpochsConfig, PAACConfig):
    clip_coef: float = setting("The surrogate's clip on the probability ratio, 1 +- clip_coef.", 0.1)
    clip_value_loss: bool = setting("Clip each value update to +- clip_coef around the value before the update.", True)
    norm_advantages: bool = setting("Normalise advantages to zero mean and unit variance in every minibatch.", True)

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        self.check_epochs(cfg)
        if self.clip_coef <= 0:
            raise ConfigError(f"algo.clip_coef = {self.clip_coef} is invalid: the ratio clip must be positive (0.1 or 0.2 are usual).")


@register
class PPO(PAAC):
    name = "ppo"
    config_class = PPOConfig

    def __init__(self, spec: EnvSpec, cfg: Config, device: torch.device):
        super().__init__(spec, cfg, device)
        self.reuses_acting_values = acting_values_are_current(cfg)

    def update(self, batch: Batch) -> UpdateResult:
        algo = self.cfg.algo
        horizon, num_envs = batch.rewards.shape
        valid = batch.transitions()
        count = minibatch_count(valid, algo.num_minibatches)
        if count == 0:  # every step only reset an env (on some rank): nothing to learn from
            return UpdateResult()
        obs = batch.obs.flatten(0, 1)
        actions = batch.actions.flatten().long()
        behaviour_log_probs = batch.behaviour_log_probs.flatten()
        rewards = clipped_rewards(batch.rewards, algo.reward_clip)
        with torch.no_grad():
            old_values, bootstrap = values_before_update(batch, lambda x: self.net(x)[1], self.reuses_acting_values)
            advantages, returns = gae(rewards, old_values.view(horizon, num_envs), bootstrap,
                                      batch.terminated, batch.truncated, algo.gamma, algo.td_lambda)
            advantages, returns = advantages.flatten(), returns.flatten()

        self.flow.begin_update()
        totals: dict[str, list[torch.Tensor]] = {}
        skipped = torch.zeros((), device=self.device)
        for _ in range(algo.update_epochs):
            for idx in minibatches(valid, count):
                with self.flow.capture():
                    logits, new_values = self.net(obs[idx])
                log_probs = F.log_softmax(logits, dim=-1)
                new_log_probs = log_probs.gather(1, actions[idx].unsqueeze(1)).squeeze(1)
                log_ratio = new_log_probs - behaviour_log_probs[idx]
                ratio = log_ratio.exp()

                adv = advantages[idx]
                if algo.norm_advantages and len(idx) > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - algo.clip_coef, 1 + algo.clip_coef)).mean()

                value_error = (new_values - returns[idx]).pow(2)
                if algo.clip_value_loss:
                    clipped = old_values[idx] + (new_values - old_values[idx]).clamp(-algo.clip_coef, algo.clip_coef)
                    value_error = torch.max(value_error, (clipped - returns[idx]).pow(2))
                value_loss = value_error.mean()
                entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
                loss = algo.loss_scale * (policy_loss - algo.entropy_coef * entropy + algo.value_coef * value_loss)

                grad_norm, stepped = clipped_step(self.optimizer, loss, self.net, algo.max_grad_norm, self.flow)
                skipped = skipped + (~stepped).float()

                with torch.no_grad():
                    for tag, value in (
                        ("losses/policy", policy_loss), ("losses/value", value_loss), ("losses/entropy", entropy),
                        ("losses/total", loss), ("diag/grad_norm", grad_norm),
                        # the k3 estimator of KL(mu || pi): unbiased, never negative (Schulman 2020)
                        ("losses/approx_kl", ((ratio - 1) - log_ratio).mean()),
                        ("losses/clip_fraction", ((ratio - 1).abs() > algo.clip_coef).float().mean()),
                    ):
                        totals.setdefault(tag, []).append(value.detach())
        metrics = {tag: torch.stack(values).mean() for tag, values in totals.items()}
        if "diag/grad_norm" in totals:
            metrics[GRAD_NORM_STEP_MAX] = torch.stack(totals["diag/grad_norm"]).max()
        metrics["diag/value_mean"] = old_values[valid].mean()
        return UpdateResult({**metrics, **self.flow.results()}, skipped_steps=skipped)
