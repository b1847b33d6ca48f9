"""PQN: parallel Q(lambda) learning without replay or a target network (Gallici et al. 2024).

Many environments decorrelate the data that a replay buffer would otherwise have to, and
LayerNorm in the network keeps the bootstrapped targets stable without a target network.
Every rollout of ``n_envs x T`` steps gives Q(lambda) targets from the network as it is,

    G_t = r_t + gamma * ((1 - lambda) * max_a Q(s_{t+1}, a) + lambda * G_{t+1}),

learnt for ``update_epochs`` passes of ``num_minibatches`` minibatches of
``(Q(s_t, a_t) - G_t)^2``. The actors are epsilon-greedy; epsilon decays linearly over the
first ``epsilon_fraction`` of training and lives in a buffer of the network, so actor
processes receive it with the weights. Auto-reset steps carry no loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import AlgoConfig, Config, ConfigError, setting
from ..contracts import GRAD_NORM_STEP_MAX, Batch, UpdateResult
from ..diagnostics import GradientFlow
from ..envs import EnvSpec
from ..nn import QNetwork
from ..optim import anneal_lr, make_optimizer
from ..registry import register
from .base import EpsilonGreedyConfig, RewardClipConfig, clipped_rewards, clipped_step
from .policies import EpsilonGreedyPolicy
from .ppo import (
    EpochsConfig,
    acting_values_are_current,
    minibatch_count,
    minibatches,
    values_before_update,
)
from .returns import lambda_returns


@dataclass
class PQNConfig(RewardClipConfig, EpsilonGreedyConfig, EpochsConfig, AlgoConfig):
    loss_scale: float = setting("Multiplies the loss (the LR then acts as if scaled by it).", 1.0)
    epsilon_fraction: float = setting("Fraction of total_steps over which epsilon decays linearly from epsilon_start to epsilon_end.", 0.1)

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        self.check_epochs(cfg)
        self.check_epsilons()
        self.check_reward_clip()
        if self.loss_scale <= 0:
            raise ConfigError(f"algo.loss_scale = {self.loss_scale} is invalid: it must be positive.")
        if not 0.0 < self.epsilon_fraction <= 1.0:
            raise ConfigError(f"algo.epsilon_fraction = {self.epsilon_fraction} is invalid: a fraction of total_steps in (0, 1].")


@register
class PQN:
    name = "pqn"
    config_class: type[AlgoConfig] = PQNConfig
    max_policy_lag: int | None = 0  # Q(lambda) targets assume the acting policy is the current one
    continuous_actions = False

    @classmethod
    def make_policy(cls, spec: EnvSpec, cfg: Config) -> EpsilonGreedyPolicy:
        return EpsilonGreedyPolicy(QNetwork(spec, cfg.model), cfg.algo.epsilon_start)

    def __init__(self, spec: EnvSpec, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.acting = self.make_policy(spec, cfg).to(device)
        self.net = self.acting.net
        self.optimizer = make_optimizer(self.net.parameters(), cfg)
        self.flow = GradientFlow(self.net, cfg.logging.diag_interval)
        self.reuses_acting_values = acting_values_are_current(cfg)

    def policy(self) -> EpsilonGreedyPolicy:
        return self.acting

    # -------------------------------------------------------------- learning
    def epsilon_at(self, fraction: float) -> float:
        algo = self.cfg.algo
        decayed = min(1.0, fraction / algo.epsilon_fraction)
        return algo.epsilon_start + decayed * (algo.epsilon_end - algo.epsilon_start)

    def set_progress(self, fraction: float) -> float:
        """Moves epsilon along its schedule and anneals the LR; returns the LR now in use."""
        self.acting.epsilon.fill_(self.epsilon_at(fraction))
        return anneal_lr([self.optimizer], self.cfg, fraction)

    def update(self, batch: Batch) -> UpdateResult:
        algo = self.cfg.algo
        horizon, num_envs = batch.rewards.shape
        valid = batch.transitions()
        count = minibatch_count(valid, algo.num_minibatches)
        if count == 0:  # every step only reset an env (on some rank): nothing to learn from
            return UpdateResult()
        obs = batch.obs.flatten(0, 1)
        actions = batch.actions.flatten().long()
        rewards = clipped_rewards(batch.rewards, algo.reward_clip)
        with torch.no_grad():
            values, bootstrap = values_before_update(batch, lambda x: self.net(x).max(-1).values, self.reuses_acting_values)
            values = values.view(horizon, num_envs)
            returns = lambda_returns(rewards, values, bootstrap, batch.terminated, batch.truncated,
                                     algo.gamma, algo.td_lambda).flatten()

        self.flow.begin_update()
        losses, grad_norms = [], []
        skipped = torch.zeros((), device=self.device)
        for _ in range(algo.update_epochs):
            for idx in minibatches(valid, count):
                with self.flow.capture():
                    q = self.net(obs[idx])
                q_taken = q.gather(1, actions[idx].unsqueeze(1)).squeeze(1)
                q_loss = F.mse_loss(q_taken, returns[idx])

                grad_norm, stepped = clipped_step(self.optimizer, algo.loss_scale * q_loss, self.net, algo.max_grad_norm,
                                                  self.flow)
                grad_norms.append(grad_norm)
                skipped = skipped + (~stepped).float()
                losses.append(q_loss.detach())  # logged before loss_scale, as every algorithm's losses/ tags
        return UpdateResult({
            "losses/q": torch.stack(losses).mean(),
            "diag/grad_norm": torch.stack(grad_norms).mean(),
            GRAD_NORM_STEP_MAX: torch.stack(grad_norms).max(),
            "diag/value_mean": values.flatten()[valid].mean(),
            "charts/epsilon": self.acting.epsilon.clone(),
            **self.flow.results(),
        }, skipped_steps=skipped)

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"policy": self.acting.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.acting.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
