"""PAAC: synchronous parallel advantage actor-critic (Clemente et al. 2017).

One network, ``n_e`` environments, an update every ``t_max`` steps on all ``n_e x t_max``
samples:  loss = scale * mean(-log pi(a|s) A - beta H(pi) + c_v (R - V)^2),
with n-step returns R bootstrapped from V(s_{t+t_max}) and A = R - V(s).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import AlgoConfig, Config, ConfigError, check_non_negative, setting
from ..contracts import Batch, UpdateResult
from ..diagnostics import GradientFlow
from ..envs import EnvSpec
from ..nn import ActorCritic
from ..optim import anneal_lr, make_optimizer
from ..registry import register
from .base import RewardClipConfig, clipped_rewards, clipped_step
from .policies import CategoricalPolicy
from .returns import n_step_returns


@dataclass
class PAACConfig(RewardClipConfig, AlgoConfig):
    entropy_coef: float = setting("Weight of the entropy bonus (beta).", 0.02)
    value_coef: float = setting("Weight of the squared value error (n-step, V-trace or GAE targets).", 0.25)
    loss_scale: float = setting("Multiplies the whole loss; PAAC's code uses 5, the LR having been tuned for a sum over t_max = 5.", 1.0)

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        check_non_negative({"algo.entropy_coef": self.entropy_coef, "algo.value_coef": self.value_coef})
        self.check_reward_clip()
        if self.loss_scale <= 0:
            raise ConfigError(f"algo.loss_scale = {self.loss_scale} is invalid: it must be positive.")


@register
class PAAC:
    name = "paac"
    config_class: type[AlgoConfig] = PAACConfig
    max_policy_lag: int | None = 0  # no off-policy correction: act with the newest weights
    continuous_actions = False

    @classmethod
    def make_policy(cls, spec: EnvSpec, cfg: Config) -> CategoricalPolicy:
        return CategoricalPolicy(ActorCritic(spec, cfg.model))

    def __init__(self, spec: EnvSpec, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.acting = self.make_policy(spec, cfg).to(device)
        self.net = self.acting.net
        self.optimizer = make_optimizer(self.net.parameters(), cfg)
        self.flow = GradientFlow(self.net, cfg.logging.diag_interval)

    def policy(self) -> CategoricalPolicy:
        return self.acting

    # -------------------------------------------------------------- learning
    def set_progress(self, fraction: float) -> float:
        """Linear annealing to 0 over the run; returns the LR now in use."""
        return anneal_lr([self.optimizer], self.cfg, fraction)

    def targets(self, batch: Batch, rewards, values, bootstrap, target_log_probs) -> tuple[torch.Tensor, torch.Tensor]:
        """Value targets and policy-gradient advantages: n-step returns, A = R - V."""
        returns = n_step_returns(rewards, values, bootstrap, batch.terminated, batch.truncated, self.cfg.algo.gamma)
        return returns, returns - values

    def update(self, batch: Batch) -> UpdateResult:
        algo = self.cfg.algo
        horizon, num_envs = batch.rewards.shape
        obs = torch.cat([batch.obs.flatten(0, 1), batch.next_obs], dim=0)
        self.flow.begin_update()
        with self.flow.capture():
            logits, values = self.net(obs)
        logits = logits[: horizon * num_envs]
        values, bootstrap = values[: horizon * num_envs].view(horizon, num_envs), values[horizon * num_envs :]

        log_probs = F.log_softmax(logits, dim=-1)
        action_log_probs = log_probs.gather(1, batch.actions.flatten().long().unsqueeze(1)).squeeze(1)
        rewards = clipped_rewards(batch.rewards, algo.reward_clip)
        with torch.no_grad():
            returns, advantages = self.targets(
                batch, rewards, values.detach(), bootstrap.detach(), action_log_probs.detach().view(horizon, num_envs)
            )
            advantages = advantages.flatten()
        valid = (~batch.autoreset).flatten().to(values.dtype)
        count = valid.sum().clamp(min=1.0)

        entropy = -(log_probs.exp() * log_probs).sum(-1)
        policy_loss = -(action_log_probs * advantages * valid).sum() / count
        value_loss = ((returns.flatten() - values.flatten()).pow(2) * valid).sum() / count
        entropy_mean = (entropy * valid).sum() / count
        loss = algo.loss_scale * (policy_loss - algo.entropy_coef * entropy_mean + algo.value_coef * value_loss)

        grad_norm, stepped = clipped_step(self.optimizer, loss, self.net, algo.max_grad_norm, self.flow)
        return UpdateResult({
            **self.flow.results(),
            "losses/policy": policy_loss.detach(),
            "losses/value": value_loss.detach(),
            "losses/entropy": entropy_mean.detach(),
            "losses/total": loss.detach(),
            "diag/grad_norm": grad_norm.detach(),
            "diag/value_mean": values.detach().mean(),
        }, skipped_steps=(~stepped).float())

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"policy": self.acting.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.acting.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
