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

import torch
import torch.nn.functional as F

from ..config import Config
from ..diagnostics import GradientFlow
from ..envs import EnvSpec
from ..nn import QNetwork
from ..optim import anneal_lr, make_optimizer
from .base import SKIPPED_STEPS, Batch, clipped_rewards, clipped_step
from .ppo import minibatches, valid_indices
from .returns import lambda_returns


class PQN:
    name = "pqn"
    max_policy_lag: int | None = 0  # Q(lambda) targets assume the acting policy is the current one

    def __init__(self, spec: EnvSpec, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.net = QNetwork(spec, cfg.model).to(device)
        self.net.epsilon.fill_(cfg.algo.epsilon_start)
        self.optimizer = make_optimizer(self.net.parameters(), cfg)
        self.flow = GradientFlow(self.net, cfg.logging.diag_interval)

    # -------------------------------------------------------------- acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Epsilon-greedy actions and their log-probabilities under the epsilon-greedy policy
        (greedy: the argmax, with log-probability 0)."""
        q = self.net(obs)
        best = q.argmax(-1)
        if greedy:
            return best, torch.zeros_like(q[:, 0])
        epsilon = self.net.epsilon
        num_actions = q.shape[-1]
        explore = torch.rand(len(q), device=q.device) < epsilon
        actions = torch.where(explore, torch.randint_like(best, num_actions), best)
        probs = epsilon / num_actions + (1 - epsilon) * (actions == best).to(q.dtype)
        return actions, probs.log()

    # -------------------------------------------------------------- learning
    def epsilon_at(self, fraction: float) -> float:
        algo = self.cfg.algo
        decayed = min(1.0, fraction / algo.epsilon_fraction)
        return algo.epsilon_start + decayed * (algo.epsilon_end - algo.epsilon_start)

    def set_progress(self, fraction: float) -> float:
        """Moves epsilon along its schedule and anneals the LR; returns the LR now in use."""
        self.net.epsilon.fill_(self.epsilon_at(fraction))
        return anneal_lr([self.optimizer], self.cfg, fraction)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        algo = self.cfg.algo
        horizon, num_envs = batch.rewards.shape
        valid = valid_indices(batch)
        if len(valid) == 0:  # every step only reset an env: nothing to learn from
            return {}
        obs = batch.obs.flatten(0, 1)
        actions = batch.actions.flatten().long()
        rewards = clipped_rewards(batch.rewards, algo.reward_clip)
        with torch.no_grad():
            max_q = self.net(torch.cat([obs, batch.next_obs], dim=0)).max(-1).values
            values, bootstrap = max_q[: horizon * num_envs].view(horizon, num_envs), max_q[horizon * num_envs :]
            returns = lambda_returns(rewards, values, bootstrap, batch.terminated, batch.truncated,
                                     algo.gamma, algo.td_lambda).flatten()

        self.flow.begin_update()
        losses, grad_norms = [], []
        skipped = 0
        for _ in range(algo.update_epochs):
            for idx in minibatches(valid, algo.num_minibatches):
                with self.flow.capture():
                    q = self.net(obs[idx])
                q_taken = q.gather(1, actions[idx].unsqueeze(1)).squeeze(1)
                q_loss = F.mse_loss(q_taken, returns[idx])

                grad_norm, stepped = clipped_step(self.optimizer, algo.loss_scale * q_loss, self.net, algo.max_grad_norm,
                                                  self.flow)
                grad_norms.append(grad_norm)
                skipped += not stepped
                losses.append(q_loss.detach())  # logged before loss_scale, as every algorithm's losses/ tags
        return {
            "losses/q": torch.stack(losses).mean(),
            "diag/grad_norm": torch.stack(grad_norms).mean(),
            "diag/value_mean": values.flatten()[valid].mean(),
            "charts/epsilon": self.net.epsilon.clone(),
            SKIPPED_STEPS: torch.tensor(float(skipped)),
            **self.flow.results(),
        }

    # -------------------------------------------------------------- state
    def prepare_evaluation(self) -> None:
        """Evaluation acts epsilon-greedily with algo.eval_epsilon, not the training schedule's epsilon."""
        self.net.epsilon.fill_(self.cfg.algo.eval_epsilon)

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
