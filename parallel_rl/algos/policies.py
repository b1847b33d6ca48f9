"""The Policies of the discrete-action algorithms (contracts.Policy): what actor processes
build and what the learner publishes, the network plus its acting state and nothing more."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import acting_noise
from ..config import Config
from ..contracts import Policy
from ..envs import EnvSpec


class CategoricalPolicy(Policy):
    """Samples from the logits of an actor-critic network (PAAC, IMPALA, PPO); the value head
    shares the torso, so the whole network is the policy's."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @torch.no_grad()
    def act(self, obs: torch.Tensor, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self._act(obs, greedy)[:2]

    @torch.no_grad()
    def act_and_value(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._act(obs, greedy=False)

    def _act(self, obs: torch.Tensor, greedy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, values = self.net(obs)
        actions = logits.argmax(-1) if greedy else acting_noise.gumbel_argmax(logits)
        log_probs = F.log_softmax(logits, dim=-1).gather(1, actions.unsqueeze(1)).squeeze(1)
        return actions, log_probs, values


def per_actor_epsilons(epsilon: torch.Tensor, count: int, alpha: float) -> torch.Tensor:
    """Ape-X's spread ``epsilon^(1 + alpha i / (count - 1))`` for i = 0 .. count - 1."""
    if count == 1:
        return epsilon.reshape(1)
    spread = torch.arange(count, dtype=torch.float32, device=epsilon.device) / (count - 1)
    return epsilon.pow(1.0 + alpha * spread)


class EpsilonGreedyPolicy(Policy):
    """Epsilon-greedy on the Q-values of ``net.q_values(obs)`` (PQN, QR-DQN).

    ``epsilon`` is a buffer: the learner moves it along its schedule and actor processes
    receive it with the weights. With ``per_actor_alpha`` (Ape-X) the i-th of the n envs in
    a call gets ``epsilon^(1 + alpha i / (n - 1))``: a call always covers the same envs in
    the same order (one group of one actor process's envs), so every env keeps a fixed
    epsilon and each group spans the whole range, however the envs are split into processes.
    """

    def __init__(self, net: nn.Module, epsilon: float, per_actor_alpha: float | None = None):
        super().__init__()
        self.net = net
        self.per_actor_alpha = per_actor_alpha
        self.register_buffer("epsilon", torch.tensor(float(epsilon)))

    @torch.no_grad()
    def act(self, obs: torch.Tensor, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Epsilon-greedy actions and their log-probabilities under the epsilon-greedy policy
        (greedy: the argmax, with log-probability 0)."""
        return self._act(obs, greedy)[:2]

    @torch.no_grad()
    def act_and_value(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The value is the greedy one, max_a Q(s, a)."""
        return self._act(obs, greedy=False)

    def _act(self, obs: torch.Tensor, greedy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = self.net.q_values(obs)
        best = q.argmax(-1)
        values = q.max(-1).values
        if greedy:
            return best, torch.zeros_like(q[:, 0]), values
        epsilon = self.epsilon
        if self.per_actor_alpha is not None:
            epsilon = per_actor_epsilons(epsilon, len(q), self.per_actor_alpha)
        num_actions = q.shape[-1]
        explore = acting_noise.uniform(len(q), device=q.device) < epsilon
        actions = torch.where(explore, acting_noise.integers(len(q), num_actions, q.device), best)
        probs = epsilon / num_actions + (1 - epsilon) * (actions == best).to(q.dtype)
        return actions, probs.log(), values

    def prepare_evaluation(self, cfg: Config) -> None:
        """One epsilon, ``algo.eval_epsilon``, in every env (not the training schedule's, nor Ape-X's spread)."""
        self.epsilon.fill_(cfg.algo.eval_epsilon)
        self.per_actor_alpha = None


class UniformPolicy(Policy):
    """Uniformly random actions and their log-probabilities, without a network: transport
    measurements (bench) and collecting data before any learning."""

    def __init__(self, spec: EnvSpec):
        super().__init__()
        self.discrete = spec.discrete
        if self.discrete:
            self.register_buffer("num_actions", torch.tensor(float(spec.num_actions)))
            self.log_prob = -math.log(spec.num_actions)
        else:
            space = spec.action_space
            self.register_buffer("low", torch.as_tensor(space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(space.high, dtype=torch.float32))
            self.log_prob = -float(np.log(space.high - space.low).sum())

    @torch.no_grad()
    def act(self, obs: torch.Tensor, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        n = obs.shape[0]
        if self.discrete:
            actions = acting_noise.integers(n, int(self.num_actions), obs.device)
        else:
            actions = self.low + (self.high - self.low) * acting_noise.uniform(n, *self.low.shape, device=obs.device)
        return actions, torch.full((n,), self.log_prob, device=obs.device)
