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
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .. import distributed
from ..config import AlgoConfig, Config, ConfigError, check_non_negative, setting
from ..contracts import GRAD_NORM_STEP_MAX, Batch, UpdateResult
from ..envs import EnvSpec
from ..nn.continuous import TanhGaussianPolicy, make_critic
from ..nn.simba import project_to_sphere
from ..optim import anneal_lr, make_optimizer
from ..registry import register
from ..replay.uniform import Transitions, UniformReplay
from .base import ReplayCadenceConfig, step_if_finite
from .distributional import RewardScaler, categorical_support, categorical_td_target
from .returns import heuristic_discount


def rollout_transitions(batch: Batch) -> Transitions:
    """The real transitions of a [T, N] rollout, auto-reset steps left out.

    The observation after step t is obs[t+1] (next_obs after the last step); when step t
    ended an episode that is its final observation, because the env resets on the next
    step (which is the auto-reset step skipped here).
    """
    following = torch.cat([batch.obs[1:], batch.next_obs.unsqueeze(0)], dim=0)
    index = batch.transitions()  # found on the host where the batch came through the runtime: no device sync

    def taken(steps: torch.Tensor) -> torch.Tensor:
        return steps.flatten(0, 1).index_select(0, index)

    return Transitions(obs=taken(batch.obs), actions=taken(batch.actions), rewards=taken(batch.rewards),
                       next_obs=taken(following), terminated=taken(batch.terminated))


@dataclass
class SACConfig(ReplayCadenceConfig, AlgoConfig):
    tau: float = setting("Soft target-critic update, target <- target + tau (critic - target).", 0.005)
    init_temperature: float = setting("Initial entropy temperature alpha (learned; SimbaV2: 0.01).", 0.01)
    target_entropy_scale: float = setting("The temperature is tuned towards an entropy of -target_entropy_scale x |A| (SimbaV2: 0.5).", 0.5)
    clipped_double_q: bool = setting("Two critics and the smaller of their values (episodic tasks such as MuJoCo); false: one critic (DMC).", True)
    distributional: bool = setting("Categorical critic (cross-entropy to the projected target, SimbaV2); false: scalar critic, squared error.", True)
    num_atoms: int = setting("Atoms of the categorical critic, evenly spaced on [v_min, v_max].", 101)
    v_min: float = setting("Lowest atom of the categorical critic (in scaled-reward units).", -5.0)
    v_max: float = setting("Highest atom of the categorical critic.", 5.0)
    reward_scale_gmax: float = setting(
        "Divide rewards by max(std of the running discounted return G, max|G| / this) (SimbaV2: 5, the support's edge); 0 uses raw rewards.", 5.0)
    gamma_from_horizon: bool = setting(
        "Ignore algo.gamma and use the paper's heuristic from the env's episode limit H: clip(1 - 5/H, 0.95, 0.995) "
        "(MuJoCo H = 1000: 0.995).", False)

    refused = {"loss_scale": "its loss is not scaled: scale the learning rate (optim.lr) instead",
               "reward_clip": "SAC scales rewards instead: algo.reward_scale_gmax, SimbaV2's"}

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        self.check_cadence()
        if cfg.model.encoder in ("nips_cnn", "nature_cnn"):
            raise ConfigError(f"model.encoder = {cfg.model.encoder!r} is for images; algo.name = 'sac' takes vector observations: "
                              f"use model.encoder=simbav2 (SimbaV2) or mlp (the LayerNorm MLP baseline).")
        if cfg.model.init != "orthogonal":
            raise ConfigError(f"model.init = {cfg.model.init!r} is for the actor-critic and Q-networks; algo.name = 'sac' "
                              "initialises its own networks (SimbaV2's or orthogonal): remove model.init.")
        if not 0.0 < self.tau <= 1.0:
            raise ConfigError(f"algo.tau = {self.tau} is invalid: the target update fraction lies in (0, 1] (SimbaV2: 0.005).")
        if self.init_temperature <= 0:
            raise ConfigError(f"algo.init_temperature = {self.init_temperature} is invalid: the temperature must be positive (SimbaV2: 0.01).")
        if self.num_atoms < 2:
            raise ConfigError(f"algo.num_atoms = {self.num_atoms} is invalid: a categorical critic needs at least 2 atoms (SimbaV2: 101).")
        if self.v_min >= self.v_max:
            raise ConfigError(f"algo.v_min = {self.v_min} must be below algo.v_max = {self.v_max}.")
        check_non_negative({"algo.reward_scale_gmax": self.reward_scale_gmax})
        self.check_warmup_ends(cfg)


@register
class SAC:
    name = "sac"
    config_class: type[AlgoConfig] = SACConfig
    max_policy_lag: int | None = None  # replay is off-policy: any lag is fine
    continuous_actions = True

    @classmethod
    def make_policy(cls, spec: EnvSpec, cfg: Config) -> TanhGaussianPolicy:
        policy = TanhGaussianPolicy(math.prod(spec.obs_shape), tuple(spec.action_space.shape), cfg.model)
        policy.warming_up.fill_(float(cfg.algo.warmup_steps > 0))
        return policy

    def __init__(self, spec: EnvSpec, cfg: Config, device: torch.device):
        self.cfg, self.device, self.spec = cfg, device, spec
        algo = cfg.algo
        self.obs_dim = math.prod(spec.obs_shape)
        self.action_shape = tuple(spec.action_space.shape)
        action_dim = math.prod(self.action_shape)
        self.net = self.make_policy(spec, cfg).to(device)
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
        self.replay = UniformReplay(cfg.replay.capacity, spec.obs_shape, spec.obs_dtype, self.action_shape, device)
        self.transitions_seen = 0
        self.update_credit = 0.0
        self.gradient_steps = 0

    def policy(self) -> TanhGaussianPolicy:
        return self.net

    # -------------------------------------------------------------- learning
    def set_progress(self, fraction: float) -> float:
        """Linear decay from optim.lr to optim.final_lr_scale x optim.lr over the run."""
        return anneal_lr([self.actor_optimizer, self.critic_optimizer, self.alpha_optimizer], self.cfg, fraction)

    @property
    def learning_starts(self) -> int:
        """Replay size before gradient steps begin (also after a resume without saved replay)."""
        return max(self.cfg.replay.minibatch_size, min(distributed.rank_share(self.cfg.algo.warmup_steps), self.cfg.replay.capacity))

    def ingest(self, batch: Batch) -> int:
        """Store the rollout's transitions and update the running statistics; returns how many
        of them arrived after the warm-up (those earn gradient steps)."""
        transitions = rollout_transitions(batch)
        self.replay.add(transitions)
        count = len(transitions.rewards)
        if self.cfg.model.obs_norm:
            self.net.obs_norm.update(transitions.obs)
        if self.reward_scaler is not None:
            self.reward_scaler.observe(batch.rewards, batch.terminated, batch.truncated, batch.autoreset)
        warmup = distributed.rank_share(self.cfg.algo.warmup_steps)  # this rank's transitions, the config's all ranks'
        before, self.transitions_seen = self.transitions_seen, self.transitions_seen + count
        self.net.warming_up.fill_(float(self.transitions_seen < warmup))
        return max(0, self.transitions_seen - max(before, warmup))  # those collected after the warm-up

    def update(self, batch: Batch) -> UpdateResult:
        fresh = self.ingest(batch)
        replay = self.replay
        metrics = {"diag/replay_size": torch.tensor(float(len(replay)))}
        ready = len(replay) >= self.learning_starts
        if ready:
            self.update_credit += self.cfg.algo.utd_ratio * fresh
        steps = distributed.fewest(int(self.update_credit) if ready else 0)  # replicas step in lockstep
        self.update_credit -= steps
        if not ready:
            return UpdateResult(metrics)
        sums: dict[str, torch.Tensor] = {}
        largest_grad_norm: torch.Tensor | None = None
        skipped = 0  # a count over all of this update's optimizer steps
        for _ in range(steps):
            step_metrics, step_skipped = self.gradient_step(replay.sample(self.cfg.replay.minibatch_size))
            skipped += step_skipped
            for tag, value in step_metrics.items():
                sums[tag] = sums[tag] + value if tag in sums else value
            if (norm := step_metrics.get("diag/grad_norm")) is not None:
                largest_grad_norm = norm if largest_grad_norm is None else torch.maximum(largest_grad_norm, norm)
        metrics.update({tag: total / steps for tag, total in sums.items()})  # none when steps == 0
        if largest_grad_norm is not None:
            metrics[GRAD_NORM_STEP_MAX] = largest_grad_norm
        metrics["diag/gradient_steps"] = torch.tensor(float(self.gradient_steps))
        metrics["diag/discount"] = torch.tensor(self.gamma)
        if self.reward_scaler is not None:
            metrics["diag/reward_scale"] = torch.tensor(self.reward_scaler.scale)
        return UpdateResult(metrics, skipped_steps=torch.as_tensor(skipped, dtype=torch.float32))

    def q_values(self, critic_out: torch.Tensor) -> torch.Tensor:
        """Mean Q per member [E, B] from the critic's [E, B, K] output."""
        if self.cfg.algo.distributional:
            return (F.softmax(critic_out, dim=-1) * self.support).sum(-1)
        return critic_out.squeeze(-1)

    def gradient_step(self, sample: Transitions) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One SAC step in SimbaV2's order: the actor (against the critic as it is), the
        temperature (from the actor's entropy), then the critic (its target drawn from the
        updated actor at the updated temperature), then the target critic. Returns its
        metrics and how many of its three optimizer steps were skipped (a 0-d tensor)."""
        algo = self.cfg.algo
        obs, next_obs = self.net.obs_norm(sample.obs), self.net.obs_norm(sample.next_obs)
        rewards = self.reward_scaler(sample.rewards) if self.reward_scaler is not None else sample.rewards

        alpha = self.log_alpha.detach().exp()
        actions, log_pi = self.net.sample(obs)
        q = self.q_values(self.critic(obs, actions)).min(0).values
        actor_loss = (alpha * log_pi - q).mean()
        _, actor_stepped = self._step(self.actor_optimizer, actor_loss)
        project_to_sphere(self.net, where=actor_stepped)

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
        project_to_sphere(self.critic, where=critic_stepped)

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
        }, 3 - (critic_stepped.float() + actor_stepped.float() + alpha_stepped.float())

    def _step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients for the optimizer's own parameters only (the actor's loss also flows
        through the critic, whose gradients must not accumulate), clipped, then a step unless
        the loss or the gradient is not finite. Returns (gradient norm, whether it stepped)."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        distributed.average_gradients(params)
        max_norm = self.cfg.algo.max_grad_norm if self.cfg.algo.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return grad_norm.detach(), step_if_finite(optimizer, loss, grad_norm)

    # -------------------------------------------------------------- state
    def state_dict(self) -> dict:
        state = {
            "policy": self.net.state_dict(),
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
        if self.cfg.replay.save_with_checkpoint:
            state["replay"] = self.replay.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["policy"])
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
            self.replay.load_state_dict(state["replay"])
