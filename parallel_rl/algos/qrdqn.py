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

import torch

from ..config import Config
from ..diagnostics import GradientFlow
from ..envs import EnvSpec
from ..nn.quantile import QuantileQNetwork
from ..optim import anneal_lr, make_optimizer
from ..replay.frames import FrameReplay
from .base import SKIPPED_STEPS, Batch, clipped_rewards, clipped_step


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


def per_actor_epsilons(epsilon: torch.Tensor, count: int, alpha: float) -> torch.Tensor:
    """Ape-X's spread ``epsilon^(1 + alpha i / (count - 1))`` for i = 0 .. count - 1."""
    if count == 1:
        return epsilon.reshape(1)
    spread = torch.arange(count, dtype=torch.float32, device=epsilon.device) / (count - 1)
    return epsilon.pow(1.0 + alpha * spread)


class QRDQN:
    name = "qrdqn"
    max_policy_lag: int | None = None  # replay is off-policy: any lag is fine

    def __init__(self, spec: EnvSpec, cfg: Config, device: torch.device):
        self.cfg, self.device = cfg, device
        algo = cfg.algo
        self.net = QuantileQNetwork(spec, cfg.model, algo.num_quantiles).to(device)
        self.target_net = copy.deepcopy(self.net).requires_grad_(False)
        self.optimizer = make_optimizer(self.net.parameters(), cfg)
        self.flow = GradientFlow(self.net, cfg.logging.diag_interval)
        self.spec = spec
        self.replay: FrameReplay | None = None
        self.evaluating = False  # prepare_evaluation(): one epsilon for every env
        # hard target updates every target_period agent steps = this many gradient steps
        self.target_every = max(1, round(algo.target_period * algo.utd_ratio))
        self.gradient_steps = 0
        self.update_credit = 0.0

    # -------------------------------------------------------------- acting
    @torch.no_grad()
    def act(self, obs: torch.Tensor, greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Epsilon-greedy actions on the mean of the quantiles, with their log-probabilities
        under the epsilon-greedy policy (greedy: the argmax, log-probability 0).

        With per-actor exploration the i-th of the n envs in the call gets Ape-X's
        epsilon^(1 + alpha i / (n - 1)). A call always covers the same envs in the same
        order (one group of one actor's envs), so every env keeps a fixed epsilon and
        each group spans the whole range, however the envs are split into processes.
        """
        q = self.net(obs).mean(-1)
        best = q.argmax(-1)
        if greedy:
            return best, torch.zeros_like(q[:, 0])
        algo = self.cfg.algo
        epsilon = self.net.epsilon
        if algo.exploration == "per_actor" and not self.evaluating:
            epsilon = per_actor_epsilons(epsilon, len(q), algo.epsilon_alpha)
        num_actions = q.shape[-1]
        explore = torch.rand(len(q), device=q.device) < epsilon
        actions = torch.where(explore, torch.randint_like(best, num_actions), best)
        probs = epsilon / num_actions + (1 - epsilon) * (actions == best).to(q.dtype)
        return actions, probs.log()

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
        self.net.epsilon.fill_(self.epsilon_at(fraction * self.cfg.total_steps))
        return anneal_lr([self.optimizer], self.cfg, fraction)

    def ensure_replay(self) -> FrameReplay:
        """The replay, allocated on first use: actor processes build this algorithm too and never need one."""
        if self.replay is None:
            cfg, spec = self.cfg, self.spec
            self.replay = FrameReplay(
                spec.obs_shape, spec.obs_dtype, cfg.env.frame_stack if spec.is_atari else 1, cfg.actors.num_envs,
                cfg.replay.capacity, cfg.algo.n_step, cfg.algo.gamma, self.device, prioritized=cfg.replay.prioritized,
                priority_exponent=cfg.replay.priority_exponent, importance_exponent=cfg.replay.importance_exponent,
                seed=cfg.seed,
            )
        return self.replay

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        algo = self.cfg.algo
        replay = self.ensure_replay()
        rewards = clipped_rewards(batch.rewards, algo.reward_clip)
        replay.add(batch.obs, batch.actions, rewards, batch.terminated, batch.truncated, batch.autoreset, batch.next_obs)
        metrics = {
            "charts/epsilon": self.net.epsilon.clone(),
            "diag/replay_size": torch.tensor(float(len(replay))),
            "diag/replay_breaks": torch.tensor(float(replay.breaks)),
        }
        if len(replay) < algo.warmup_steps or not replay.can_sample():
            return metrics
        self.update_credit += int((~batch.autoreset).sum()) * algo.utd_ratio
        steps = int(self.update_credit)
        self.update_credit -= steps
        if steps == 0:
            return metrics
        self.flow.begin_update()
        stats = [self.gradient_step() for _ in range(steps)]
        metrics.update({tag: torch.stack([s[tag] for s in stats]).mean() for tag in stats[0] if tag != SKIPPED_STEPS})
        metrics[SKIPPED_STEPS] = torch.stack([s[SKIPPED_STEPS] for s in stats]).sum()
        metrics["diag/gradient_steps"] = torch.tensor(float(self.gradient_steps))
        metrics.update(self.flow.results())
        return metrics

    def gradient_step(self) -> dict[str, torch.Tensor]:
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
        if stepped and self.replay.prioritized:
            self.replay.update_priorities(sample.index, per_sample.detach())
        self.gradient_steps += 1
        if self.gradient_steps % self.target_every == 0:
            self.target_net.load_state_dict(self.net.state_dict())
        return {
            "losses/quantile_huber": loss.detach(),
            "diag/grad_norm": grad_norm.detach(),
            "diag/value_mean": quantiles.detach().mean(),
            SKIPPED_STEPS: torch.tensor(float(not stepped)),
        }

    # -------------------------------------------------------------- state
    def prepare_evaluation(self) -> None:
        """Evaluation acts epsilon-greedily with algo.eval_epsilon in every env, not the training schedule's epsilon."""
        self.net.epsilon.fill_(self.cfg.algo.eval_epsilon)
        self.evaluating = True

    def state_dict(self) -> dict:
        return {
            "net": self.net.state_dict(),
            "target_net": self.target_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "gradient_steps": self.gradient_steps,
            "update_credit": self.update_credit,
        }

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.target_net.load_state_dict(state["target_net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gradient_steps = int(state["gradient_steps"])
        self.update_credit = float(state["update_credit"])
