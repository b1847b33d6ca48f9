"""A toy algorithm defined outside the package, to show that one file (plus a recipe) is a
new algorithm: it declares its own config section and Policy, and is named by its import
path, ``algo.name: toy_a2c:ToyA2C`` (with this folder on PYTHONPATH).

The algorithm is the plainest advantage actor-critic: discounted returns bootstrapped from
the value of the observation after the rollout, cut at episode ends, and one Adam step on
``-log pi(a|s) A + 0.5 (G - V)^2 - beta H`` per rollout. It samples its actions with
``torch.distributions``, as code written without this package in mind does; acting seeds
torch's generator per call, so its seeded runs reproduce (``parallel_rl.acting_noise``'s
samplers would also keep them when the envs are grouped differently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from parallel_rl.config import AlgoConfig, Config, ConfigError, setting
from parallel_rl.contracts import Batch, Policy, UpdateResult
from parallel_rl.envs import EnvSpec


@dataclass
class ToyA2CConfig(AlgoConfig):
    entropy_coef: float = setting("Weight of the entropy bonus.", 0.01)

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        if self.entropy_coef < 0:
            raise ConfigError(f"algo.entropy_coef = {self.entropy_coef} is invalid: it must be 0 or more.")


class ToyPolicy(Policy):
    def __init__(self, obs_dim: int, num_actions: int, width: int):
        super().__init__()
        self.torso = nn.Sequential(nn.Linear(obs_dim, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())
        self.logits = nn.Linear(width, num_actions)
        self.value = nn.Linear(width, 1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.torso(obs.float().flatten(1))
        return self.logits(hidden), self.value(hidden).squeeze(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        logits, _ = self(obs)
        dist = torch.distributions.Categorical(logits=logits)
        actions = logits.argmax(-1) if greedy else dist.sample()
        return actions, dist.log_prob(actions)


class ToyA2C:
    name = "toy_a2c"
    config_class = ToyA2CConfig
    max_policy_lag = 0  # no off-policy correction
    continuous_actions = False

    @classmethod
    def make_policy(cls, spec: EnvSpec, cfg: Config) -> ToyPolicy:
        return ToyPolicy(math.prod(spec.obs_shape), spec.num_actions, cfg.model.width)

    def __init__(self, spec: EnvSpec, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.acting = self.make_policy(spec, cfg).to(device)
        self.optimizer = torch.optim.Adam(self.acting.parameters(), lr=cfg.optim.lr)

    def policy(self) -> ToyPolicy:
        return self.acting

    def set_progress(self, fraction: float) -> float:
        return self.cfg.optim.lr

    def update(self, batch: Batch) -> UpdateResult:
        algo = self.cfg.algo
        horizon, num_envs = batch.rewards.shape
        logits, values = self.acting(torch.cat([batch.obs.flatten(0, 1), batch.next_obs]))
        values, bootstrap = values[: horizon * num_envs].view(horizon, num_envs), values[horizon * num_envs :]
        returns = torch.empty_like(values)
        running = bootstrap.detach()
        for t in reversed(range(horizon)):
            running = batch.rewards[t] + algo.gamma * running * ~(batch.terminated[t] | batch.truncated[t])
            returns[t] = running
        valid = ~batch.autoreset
        dist = torch.distributions.Categorical(logits=logits[: horizon * num_envs].view(horizon, num_envs, -1))
        advantages = (returns - values).detach()
        policy_loss = -(dist.log_prob(batch.actions.long()) * advantages)[valid].mean()
        value_loss = 0.5 * (returns - values).pow(2)[valid].mean()
        entropy = dist.entropy()[valid].mean()
        loss = policy_loss + value_loss - algo.entropy_coef * entropy
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return UpdateResult({"losses/policy": policy_loss.detach(), "losses/value": value_loss.detach(),
                             "losses/entropy": entropy.detach()})

    def state_dict(self) -> dict:
        return {"policy": self.acting.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.acting.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
