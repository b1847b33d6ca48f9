"""SAC (Haarnoja et al. 2018) for continuous actions; with SimbaV2's networks, categorical
critic and reward scaling it is SimbaV2 (Lee et al. 2025).

Off-policy in the same runtime as PAAC: each update receives one rollout [T, N] from the
actors, stores its transitions in a replay buffer and then takes gradient steps on
uniformly sampled minibatches, ``algo.utd_ratio`` of them per new transition (fractions
carry over to the next update). Per gradient step:

  critic:      cross-entropy to the projected target  r + gamma (1 - term) (Z(s',a') - alpha log pi(a'|s'))
               (or the squared error to its mean with a scalar critic); with clipped double-Q the
               target member is the one whose mean Q at (s', a') is smaller
  actor:       mean(alpha log pi(a|s) - Q(s, a)),  a ~ pi(.|s) reparametrised; Q = min over members
  temperature: alpha * (entropy - target_entropy), target_entropy = -target_entropy_scale * |A|
  target:      polyak averaging with tau

Until ``algo.warmup_steps`` transitions have been collected the actors act uniformly at
random and no gradient step is taken. The flag lives in a buffer of ``.net``, so actor
processes see it with the weights they receive.
"""

from __future__ import annotations

import copy
import math

import torch
from torch.nn import functional as F

from ..config import Config
from ..envs import EnvSpec
from ..nn.continuous import TanhGaussianPolicy, make_critic, squashed_gaussian_sample
from ..nn.simba import project_to_sphere
from ..optim import anneal_lr, make_optimizer
from ..replay.uniform import Transitions, UniformReplay
from .base import SKIPPED_STEPS, Batch, step_if_finite
from .distributional import RewardScaler, categorical_support, categorical_td_target
from .returns import heuristic_discount


def rollout_transitions(batch: Batch) -> Transitions:
    """The real transitions of a [T, N] rollout, auto-reset steps left out.

    The observation after step t is obs[t+1] (next_obs after the last step); when step t
    ended an episode that is its final observation, because the env resets on the next
    step (which is the auto-reset step skipped here).
    """
    following = torch.cat([batch.obs[1:], batch.next_obs.unsqueeze(0)], dim=0)
    valid = ~batch.autoreset
    return Transitions(
        obs=batch.obs[valid],
        actions=batch.actions[valid],
        rewards=batch.rewards[valid],
        next_obs=following[valid],
        terminated=batch.terminated[valid],
    )


class SAC:
    name = "sac"
    max_policy_lag: int | None = None  # replay is off-policy: any lag is fine

    def __init__(self, spec: EnvSpec, cfg: Config, device: torch.device):
        self.cfg, self.device, self.spec = cfg, device, spec
        algo = cfg.algo
        self.obs_dim = math.prod(spec.obs_shape)
        self.action_shape = tuple(spec.action_space.shape)
        action_dim = math.prod(self.action_shape)
        self.net = TanhGaussianPolicy(self.obs_dim, action_dim, cfg.model).to(device)
        self.net.warming_up.fill_(float(algo.warmup_steps > 0))
        members = 2 if algo.clipped_double_q else 1
        outputs = algo.num_atoms if algo.distributional else 1
        self.critic = make_critic(self.obs_dim, action_dim, cfg.model, members, outputs).to(device)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(algo.init_temperature), device=device, requires_grad=True)
        self.target_entropy = -algo.target_entropy_scale * action_dim
        self.gamma = heuristic_discount(spec.max_episode_steps) if algo.gamma_from_horizon else algo.gamma
        self.actor_optimizer = make_optimizer(self.net.parameters(), cfg)
        self.critic_optimizer = make_optimizer(self.critic.parameters(), cfg)
        self.alpha_optimizer = make_optimizer([self.log_alpha], cfg)
        self.reward_scaler = RewardScaler(self.gamma, algo.reward_scale_gmax) if algo.reward_scale_gmax > 0 else None
        if algo.distributional:
            self.support = categorical_support(algo.v_min, algo.v_max, algo.num_atoms, device)
        self.replay: UniformReplay | None = None  # allocated at the first update: actor processes build this class too
        self.transitions_seen = 0
        self.update_credit = 0.0
        self.gradient_steps = 0

    # -------------------------------------------------------------- acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Actions in [-1, 1] (the env factory maps them to the env's bounds) and their log-densities.

        ``greedy`` takes tanh of the Gaussian's mean; otherwise actions are sampled, or
        uniformly random while warming up.
        """
        n = obs.shape[0]
        if not greedy and bool(self.net.warming_up):
            actions = torch.rand((n, *self.action_shape), device=obs.device) * 2.0 - 1.0
            return actions, torch.full((n,), -math.log(2.0) * actions[0].numel(), device=obs.device)
        mean, log_std = self.net(self.net.obs_norm(obs))
        if greedy:
            return torch.tanh(mean), torch.zeros(n, device=obs.device)
        return squashed_gaussian_sample(mean, log_std)

    # -------------------------------------------------------------- learning
    def set_progress(self, fraction: float) -> float:
        """Linear decay from optim.lr to optim.final_lr_scale x optim.lr over the run."""
        return anneal_lr([self.actor_optimizer, self.critic_optimizer, self.alpha_optimizer], self.cfg, fraction)

    @property
    def learning_starts(self) -> int:
        """Replay size before gradient steps begin (also after a resume without saved replay)."""
        return max(self.cfg.replay.minibatch_size, min(self.cfg.algo.warmup_steps, self.cfg.replay.capacity))

    def ensure_replay(self) -> UniformReplay:
        if self.replay is None:
            self.replay = UniformReplay(self.cfg.replay.capacity, self.spec.obs_shape, self.spec.obs_dtype,
                                        self.action_shape, self.device)
        return self.replay

    def ingest(self, batch: Batch) -> int:
        """Store the rollout's transitions and update the running statistics; returns how many
        of them arrived after the warm-up (those earn gradient steps)."""
        transitions = rollout_transitions(batch)
        self.ensure_replay().add(transitions)
        count = len(transitions.rewards)
        if self.cfg.model.obs_norm:
            self.net.obs_norm.update(transitions.obs)
        if self.reward_scaler is not None:
            self.reward_scaler.observe(batch.rewards, batch.terminated, batch.truncated, batch.autoreset)
        warmup = self.cfg.algo.warmup_steps
        before, self.transitions_seen = self.transitions_seen, self.transitions_seen + count
        self.net.warming_up.fill_(float(self.transitions_seen < warmup))
        return max(0, self.transitions_seen - max(before, warmup))  # those collected after the warm-up

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        fresh = self.ingest(batch)
        replay = self.ensure_replay()
        metrics = {"diag/replay_size": torch.tensor(float(len(replay)))}
        if len(replay) < self.learning_starts:
            return metrics
        self.update_credit += self.cfg.algo.utd_ratio * fresh
        steps = int(self.update_credit)
        self.update_credit -= steps
        sums: dict[str, torch.Tensor] = {}
        for _ in range(steps):
            for tag, value in self.gradient_step(replay.sample(self.cfg.replay.minibatch_size)).items():
                sums[tag] = sums[tag] + value if tag in sums else value
        skipped = sums.pop(SKIPPED_STEPS, torch.zeros(()))
        metrics.update({tag: total / steps for tag, total in sums.items()})
        metrics[SKIPPED_STEPS] = skipped  # a count over all of this update's optimizer steps
        metrics["diag/gradient_steps"] = torch.tensor(float(self.gradient_steps))
        metrics["diag/discount"] = torch.tensor(self.gamma)
        if self.reward_scaler is not None:
            metrics["diag/reward_scale"] = torch.tensor(self.reward_scaler.scale)
        return metrics

    def q_values(self, critic_out: torch.Tensor) -> torch.Tensor:
        """Mean Q per member [E, B] from the critic's [E, B, K] output."""
        if self.cfg.algo.distributional:
            return (F.softmax(critic_out, dim=-1) * self.support).sum(-1)
        return critic_out.squeeze(-1)

    def gradient_step(self, sample: Transitions) -> dict[str, torch.Tensor]:
        """One SAC step in SimbaV2's order: the actor (against the critic as it is), the
        temperature (from the actor's entropy), then the critic (its target drawn from the
        updated actor at the updated temperature), then the target critic."""
        algo = self.cfg.algo
        obs, next_obs = self.net.obs_norm(sample.obs), self.net.obs_norm(sample.next_obs)
        rewards = self.reward_scaler(sample.rewards) if self.reward_scaler is not None else sample.rewards

        alpha = self.log_alpha.detach().exp()
        actions, log_pi = self.net.sample(obs)
        q = self.q_values(self.critic(obs, actions)).min(0).values
        actor_loss = (alpha * log_pi - q).mean()
        _, actor_stepped = self._step(self.actor_optimizer, actor_loss)
        if actor_stepped:
            project_to_sphere(self.net)

        entropy = -log_pi.detach().mean()
        alpha_loss = self.log_alpha.exp() * (entropy - self.target_entropy)
        _, alpha_stepped = self._step(self.alpha_optimizer, alpha_loss)

        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            next_actions, next_log_pi = self.net.sample(next_obs)
            target_out = self.target_critic(next_obs, next_actions)
            next_q = self.q_values(target_out)
            pick = next_q.argmin(0)  # the pessimistic member per sample (the only one without CDQ)
            if algo.distributional:
                next_probs = F.softmax(target_out, dim=-1)
                next_probs = next_probs.gather(0, pick.view(1, -1, 1).expand(1, *next_probs.shape[1:])).squeeze(0)
                target = categorical_td_target(next_probs, next_log_pi, rewards, sample.terminated, self.gamma, alpha,
                                               algo.v_min, algo.v_max)
            else:
                soft_next = next_q.gather(0, pick.unsqueeze(0)).squeeze(0) - alpha * next_log_pi
                target = rewards + self.gamma * (~sample.terminated).to(rewards.dtype) * soft_next

        critic_out = self.critic(obs, sample.actions)
        if algo.distributional:
            critic_loss = -(target * F.log_softmax(critic_out, dim=-1)).sum(-1).mean(-1).sum()
        else:
            critic_loss = (critic_out.squeeze(-1) - target).square().mean(-1).sum()
        critic_grad_norm, critic_stepped = self._step(self.critic_optimizer, critic_loss)
        if critic_stepped:  # a skipped step leaves the weights bit for bit as they were
            project_to_sphere(self.critic)

        with torch.no_grad():
            online, target_params = list(self.critic.parameters()), list(self.target_critic.parameters())
            torch._foreach_lerp_(target_params, online, algo.tau)
        self.gradient_steps += 1
        return {
            "losses/value": critic_loss.detach(),
            "losses/policy": actor_loss.detach(),
            "losses/entropy": entropy,
            "losses/temperature": alpha_loss.detach(),
            "diag/temperature": alpha,
            "diag/value_mean": q.detach().mean(),
            "diag/grad_norm": critic_grad_norm,
            SKIPPED_STEPS: torch.tensor(3.0 - critic_stepped - actor_stepped - alpha_stepped),
        }

    def _step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Gradients for the optimizer's own parameters only (the actor's loss also flows
        through the critic, whose gradients must not accumulate), clipped, then a step unless
        the loss or the gradient is not finite. Returns (gradient norm, whether it stepped)."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        max_norm = self.cfg.algo.max_grad_norm if self.cfg.algo.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return grad_norm.detach(), step_if_finite(optimizer, loss, grad_norm)

    # -------------------------------------------------------------- state
    def prepare_evaluation(self) -> None:
        """Nothing to change for evaluation: the policy's own noise (or --greedy, its mean)."""

    def state_dict(self) -> dict:
        state = {
            "net": self.net.state_dict(),
            "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict() if self.reward_scaler is not None else None,
            "transitions_seen": self.transitions_seen,
            "update_credit": self.update_credit,
            "gradient_steps": self.gradient_steps,
        }
        if self.cfg.replay.save_with_checkpoint and self.replay is not None:
            state["replay"] = self.replay.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        if self.reward_scaler is not None and state["reward_scaler"] is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.transitions_seen = int(state["transitions_seen"])
        self.update_credit = float(state["update_credit"])
        self.gradient_steps = int(state["gradient_steps"])
        if state.get("replay") is not None:
            self.ensure_replay().load_state_dict(state["replay"])
