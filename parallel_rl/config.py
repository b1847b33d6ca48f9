"""Typed configuration: dataclasses with a help string per field, YAML recipes, overrides.

A run's configuration is built in one order, later layers winning:
dataclass defaults -> YAML recipe (``--config``) -> named CLI flags -> ``--set a.b=value``.
Every layer goes through the same checks, so an unknown key, a wrong type or an
out-of-range value is reported the same way wherever it came from: a ``ConfigError``
whose message names the value and the valid choices. ``validate()`` then checks the
cross-field arithmetic once.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# parallel_rl/configs links to the top-level configs/ in a checkout and is copied into wheels
CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_RECIPE = "paac_atari.yaml"


class ConfigError(ValueError):
    """A configuration value is invalid; the message is meant for the user as it is."""


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class EnvConfig:
    id: str = _help("Environment id: any EnvPool task (`parallel-rl envs` lists them) or a registered gymnasium id.", "Pong-v5")
    backend: Literal["auto", "envpool", "gymnasium"] = _help("Which library steps the environments; `auto` prefers EnvPool.", "auto")
    max_episode_steps: int = _help("Truncate episodes after this many agent steps; 0 keeps the environment's own limit.", 0)
    frame_skip: int = _help("Atari: action repeat, max-pooling the last two frames.", 4)
    frame_stack: int = _help("Atari: number of stacked frames in an observation.", 4)
    image_size: int = _help("Atari: observations are image_size x image_size grayscale.", 84)
    noop_max: int = _help("Atari: up to this many no-op actions at the start of an episode.", 30)
    sticky_action_prob: float = _help("Atari: probability of repeating the previous action (0 = PAAC's deterministic ALE).", 0.0)
    episodic_life: bool = _help("Atari: a life lost ends the learning episode (no bootstrap across it); reported episodes "
                                "(charts/episodic_return, evaluation) still span whole games.", False)
    fire_reset: bool = _help("Atari: press FIRE after reset in games that need it.", True)


@dataclass
class ActorsConfig:
    num_envs: int = _help("Number of environments stepped in parallel (PAAC's n_e); `--actors` sets it.", 32)
    num_threads: int = _help("EnvPool worker threads; 0 sizes them from the cores left after the learner.", 0)
    device: str = _help("Device for the actors' policy inference: auto, cpu, cuda, cuda:N.", "auto")
    procs: int = _help("Actor processes (K) sharing the environments; 0 runs the actor loop inline (synchronous, exact); -1 picks K from the core count.", -1)
    env_groups: int = _help("Groups of envs per actor stepped alternately, so inference for one overlaps stepping of the other.", 2)
    slots_per_actor: int = _help("Shared-memory rollout slots per actor process (2 = double buffering).", 2)
    max_policy_lag: int = _help(
        "Actor processes wait for weights at most this many updates old before acting (0: the newest, exactly as K = 0); "
        "-1 takes the algorithm's own: 0 for PAAC, PPO and PQN, unbounded for IMPALA (V-trace corrects), QR-DQN and SAC "
        "(replay is off-policy). The slots bound the lag at about actors.slots_per_actor anyway.", -1)
    deterministic_lag: bool = _help("Asynchronous mode: actors act with exactly the previous policy version, making seeded runs "
                                    "reproducible while acting overlaps learning.", False)
    heartbeat_timeout_s: float = _help("An actor silent for this long is reported as stalled.", 3.0)
    restart_actors: bool = _help("Restart a dead or stalled actor instead of stopping the run.", False)


@dataclass
class ModelConfig:
    encoder: Literal["auto", "mlp", "nips_cnn", "nature_cnn", "simbav2"] = _help(
        "Observation encoder; `auto` picks nature_cnn for images and mlp for vectors. SAC: mlp (LayerNorm MLP actor and "
        "critics, the baseline) or simbav2 (hyperspherical embedding and LERP residual blocks).", "auto")
    torso: Literal["mlp", "multiskip"] = _help(
        "Torso after the encoder: mlp (depth x Linear -> [LayerNorm] -> ReLU) or multiskip (the multi-skip residual MLP: "
        "g = LN(Linear(features)) added into each of depth residual blocks, then Linear -> LN -> ReLU).", "mlp")
    width: int = _help("Units per hidden layer of the torso (after the CNN for images); the depth-width sweep uses 512, 1536, 2560.", 256)
    depth: int = _help("Hidden layers of the mlp torso, or residual blocks of the multiskip torso (2 Linear layers each; 1/3/5 blocks = 4/8/12 layers).", 1)
    layer_norm: bool = _help("LayerNorm after every hidden Linear and every convolution (over C,H,W).", True)
    init: Literal["orthogonal", "fan_in_uniform"] = _help(
        "Weight initialisation of the actor-critic and Q-networks: orthogonal (gain sqrt 2, heads 0.01 / value 1, zero "
        "biases: CleanRL's) or fan_in_uniform (weights and biases U(+-1/sqrt(fan_in)), heads included: PAAC's code).",
        "orthogonal")
    critic_width: int = _help("SAC: units per critic layer (model.width sizes the actor; SimbaV2: critic 512, actor 128).", 512)
    critic_depth: int = _help("SAC: hidden layers (mlp) or LERP residual blocks (simbav2) of each critic (SimbaV2: 2; actor 1 via model.depth).", 2)
    obs_norm: bool = _help("SAC: normalise observations by their running mean and variance (the actors receive the statistics with the weights).", True)


@dataclass
class AlgoConfig:
    name: Literal["paac", "impala", "ppo", "pqn", "sac", "qrdqn"] = _help(
        "Algorithm: paac (n-step advantage actor-critic), impala (V-trace off-policy correction), ppo (clipped surrogate, GAE), "
        "pqn (parallel Q(lambda), no replay, no target network), sac (soft actor-critic with replay, continuous actions; "
        "SimbaV2 with model.encoder=simbav2) or qrdqn (quantile-regression DQN with a frame replay, discrete actions).", "paac")
    rollout_length: int = _help("Agent steps per environment between updates (PAAC's t_max).", 5)
    gamma: float = _help("Discount factor.", 0.99)
    entropy_coef: float = _help("Weight of the entropy bonus (beta).", 0.02)
    value_coef: float = _help("Weight of the squared value error (n-step, V-trace or GAE targets).", 0.25)
    loss_scale: float = _help("Multiplies the whole loss; PAAC's code uses 5, the LR having been tuned for a sum over t_max = 5.", 1.0)
    max_grad_norm: float = _help("Global gradient-norm clip; 0 disables it.", 3.0)
    reward_clip: float = _help("Clip rewards to [-c, c] for learning (returns are logged unclipped); 0 disables it.", 0.0)
    rho_bar: float = _help("IMPALA: clip of the importance weights in the V-trace targets and policy gradient.", 1.0)
    c_bar: float = _help("IMPALA: clip of the trace-cutting coefficients in V-trace.", 1.0)
    td_lambda: float = _help("lambda of the lambda-returns: PPO's GAE(lambda) (0.95), PQN's Q(lambda) (0.65).", 0.95)
    update_epochs: int = _help("PPO, PQN: passes over each batch of rollouts.", 4)
    num_minibatches: int = _help("PPO, PQN: minibatches per pass (each holds actors.num_envs x algo.rollout_length / this many samples).", 4)
    clip_coef: float = _help("PPO: the surrogate's clip on the probability ratio, 1 +- clip_coef.", 0.1)
    clip_value_loss: bool = _help("PPO: clip each value update to +- clip_coef around the value before the update.", True)
    norm_advantages: bool = _help("PPO: normalise advantages to zero mean and unit variance in every minibatch.", True)
    epsilon_start: float = _help("PQN, QR-DQN: exploration rate of the epsilon-greedy actors at the start (QR-DQN: after the warm-up).", 1.0)
    epsilon_end: float = _help("PQN, QR-DQN: exploration rate after the linear decay (Dopamine's QR-DQN: 0.01).", 0.005)
    eval_epsilon: float = _help("PQN, QR-DQN: exploration rate when evaluating (Dopamine's 0.001); `eval --greedy` takes 0.", 0.001)
    epsilon_fraction: float = _help("PQN: fraction of total_steps over which epsilon decays linearly from epsilon_start to epsilon_end.", 0.1)
    utd_ratio: float = _help("SAC, QR-DQN: gradient steps per new transition, all actors together (update-to-data ratio; SimbaV2: 2; "
                             "QR-DQN: 0.25, Dopamine's update every 4 agent steps). Fractions carry over between updates.", 2.0)
    warmup_steps: int = _help("SAC, QR-DQN: transitions collected with uniformly random actions before the first gradient step "
                              "(SimbaV2: 5000; QR-DQN counts agent steps in its replay, Dopamine: 20000).", 5000)
    tau: float = _help("SAC: soft target-critic update, target <- target + tau (critic - target).", 0.005)
    init_temperature: float = _help("SAC: initial entropy temperature alpha (learned; SimbaV2: 0.01).", 0.01)
    target_entropy_scale: float = _help("SAC: the temperature is tuned towards an entropy of -target_entropy_scale x |A| (SimbaV2: 0.5).", 0.5)
    clipped_double_q: bool = _help("SAC: two critics and the smaller of their values (episodic tasks such as MuJoCo); false: one critic (DMC).", True)
    distributional: bool = _help("SAC: categorical critic (cross-entropy to the projected target, SimbaV2); false: scalar critic, squared error.", True)
    num_atoms: int = _help("SAC: atoms of the categorical critic, evenly spaced on [v_min, v_max].", 101)
    v_min: float = _help("SAC: lowest atom of the categorical critic (in scaled-reward units).", -5.0)
    v_max: float = _help("SAC: highest atom of the categorical critic.", 5.0)
    reward_scale_gmax: float = _help(
        "SAC: divide rewards by max(std of the running discounted return G, max|G| / this) (SimbaV2: 5, the support's edge); 0 uses raw rewards.", 5.0)
    gamma_from_horizon: bool = _help(
        "SAC: ignore algo.gamma and use the paper's heuristic from the env's episode limit H: clip(1 - 5/H, 0.95, 0.995) "
        "(MuJoCo H = 1000: 0.995).", False)
    num_quantiles: int = _help("QR-DQN: quantiles of the return distribution per action (Dopamine: 200).", 200)
    kappa: float = _help("QR-DQN: threshold of the quantile-Huber loss (quadratic below, linear above).", 1.0)
    n_step: int = _help("QR-DQN: steps of the multi-step return, computed by the replay at sampling time (Dopamine: 3).", 3)
    target_period: int = _help("QR-DQN: agent steps between hard copies of the online network into the target network (Dopamine: 8000).", 8000)
    epsilon_decay_steps: int = _help("QR-DQN: agent steps after the warm-up over which epsilon decays linearly from epsilon_start to epsilon_end (Dopamine: 250000).", 250_000)
    exploration: Literal["linear", "per_actor"] = _help(
        "QR-DQN: linear (one epsilon for all envs, on the schedule) or per_actor (Ape-X: env i of the n stepped together "
        "keeps epsilon_base^(1 + epsilon_alpha i / (n - 1))); both act uniformly at random during the warm-up.", "linear")
    epsilon_base: float = _help("QR-DQN, exploration per_actor: the largest epsilon (Ape-X: 0.4).", 0.4)
    epsilon_alpha: float = _help("QR-DQN, exploration per_actor: the exponent's spread (Ape-X: 7, down to 0.4^8 = 0.00066).", 7.0)


@dataclass
class OptimConfig:
    name: Literal["rmsprop", "rmsprop_tf", "adam", "radam", "kron"] = _help(
        "Optimizer: rmsprop, adam, radam (torch.optim), rmsprop_tf (TensorFlow's RMSProp, PAAC's: eps inside the square root, "
        "mean square starting at 1) or kron (PSGD-Kron, preconditioned SGD with Kronecker-factored preconditioners).", "rmsprop")
    lr: float = _help("Learning rate (per environment when lr_per_env is set; divided by kron_lr_divisor for kron).", 0.0007)
    kron_lr_divisor: float = _help("Kron: its learning rate is optim.lr / this (the paper's rule: a third of the base LR).", 3.0)
    kron_max_size_triangular: int = _help(
        "Kron: a weight dimension larger than this gets a diagonal preconditioner factor instead of a triangular one "
        "(far cheaper; the default keeps every width up to 8192 triangular, as the paper's Kron does).", 8192)
    lr_per_env: bool = _help("Multiply lr by actors.num_envs (PAAC's rule: 0.0007 x n_e).", True)
    anneal_lr: bool = _help("Decay the learning rate linearly to 0 (or final_lr_scale x LR) over anneal_steps.", True)
    anneal_steps: int = _help("Agent steps the LR decay spans (0: total_steps); PAAC's code anneals over 80M whatever the budget.", 0)
    final_lr_scale: float = _help("With anneal_lr the decay ends at this fraction of the start LR instead of 0 (SimbaV2: 0.5, 1e-4 -> 5e-5).", 0.0)
    alpha: float = _help("RMSProp smoothing constant.", 0.99)
    eps: float = _help("Optimizer epsilon (RMSProp 0.1 in PAAC).", 0.1)


@dataclass
class ReplayConfig:
    capacity: int = _help("SAC, QR-DQN: transitions the replay buffer holds (QR-DQN: agent steps, capacity / actors.num_envs per env), on the "
                          "learner's GPU when it fits in half its free memory, else host memory.", 1_000_000)
    minibatch_size: int = _help("SAC, QR-DQN: transitions per gradient step, sampled from the replay buffer (SimbaV2: 256; "
                                "QR-DQN: Dopamine 32, Small Batch 8).", 256)
    save_with_checkpoint: bool = _help("SAC: write the replay buffer into every checkpoint, so a resume continues with the same data (large).", False)
    prioritized: bool = _help("QR-DQN: sample transitions in proportion to priority^priority_exponent (a sum tree) instead of uniformly.", False)
    priority_exponent: float = _help("QR-DQN, prioritized: priority = (loss + 1e-6)^this; 0 is uniform (Dopamine: 0.5).", 0.5)
    importance_exponent: float = _help("QR-DQN, prioritized: importance-sampling weights (N P(i))^-this, scaled to a largest weight of 1 (Dopamine: 0.5).", 0.5)


@dataclass
class LoggingConfig:
    run_root: str = _help("Folder under which run directories are created.", "runs")
    interval_s: float = _help("Seconds between TensorBoard scalar writes and console refreshes.", 5.0)
    return_window: int = _help("Completed episodes averaged for the console's and checkpoint's recent return.", 20)
    console: bool = _help("Print a progress line with steps, SPS, recent return and ETA.", True)
    diag_interval: int = _help(
        "Gradient-flow diagnostics (diag/grad_norm/<layer>, diag/feature_norm, diag/dormant_fraction, diag/effective_lr) "
        "on one minibatch every this many updates; 0 turns them off.", 100)


@dataclass
class CheckpointConfig:
    interval_steps: int = _help("Agent steps between periodic checkpoints; 0 saves only at the end.", 1_000_000)
    keep_last: int = _help("Periodic checkpoints kept on disk (the newest ones).", 3)


@dataclass
class Config:
    total_steps: int = _help("Agent steps to train for, summed over all environments (frames = steps x frame_skip).", 10_000_000)
    seed: int = _help("Seed for environments, network initialisation and sampling.", 1)
    device: str = _help("Learner device: auto (cuda when available), cpu, cuda, cuda:N.", "auto")
    torch_threads: int = _help("torch intra-op threads in the learner process; 0 uses all cores.", 0)
    max_nonfinite_updates: int = _help(
        "An update whose loss or gradient is NaN/inf is skipped (weights and optimizer state untouched, counted in "
        "diag/nonfinite_updates); this many in a row stop the run with exit code 1, its final checkpoint holding the last good weights.", 10)
    env: EnvConfig = _help("Environment.", factory=EnvConfig)
    actors: ActorsConfig = _help("Actors (environments) and where they run.", factory=ActorsConfig)
    model: ModelConfig = _help("Network.", factory=ModelConfig)
    algo: AlgoConfig = _help("Algorithm.", factory=AlgoConfig)
    optim: OptimConfig = _help("Optimizer.", factory=OptimConfig)
    logging: LoggingConfig = _help("Logging and monitoring.", factory=LoggingConfig)
    checkpoint: CheckpointConfig = _help("Checkpoints.", factory=CheckpointConfig)
    replay: ReplayConfig = _help("Replay buffer of the off-policy algorithms.", factory=ReplayConfig)

    # ------------------------------------------------------------------ derived values
    @property
    def effective_lr(self) -> float:
        lr = self.optim.lr * (self.actors.num_envs if self.optim.lr_per_env else 1)
        return lr / self.optim.kron_lr_divisor if self.optim.name == "kron" else lr

    @property
    def lr_arithmetic(self) -> str:
        """How the learning rate in use follows from the config, e.g. for Kron
        'optim.lr 0.00025 / optim.kron_lr_divisor 3 = 8.333e-05'."""
        terms = f"optim.lr {self.optim.lr:g}"
        if self.optim.lr_per_env:
            terms += f" x actors.num_envs {self.actors.num_envs}"
        if self.optim.name == "kron":
            terms += f" / optim.kron_lr_divisor {self.optim.kron_lr_divisor:g}"
        return f"{terms} = {self.effective_lr:.4g}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Cross-field checks; each message shows the arithmetic behind it."""
        positive = {
            "total_steps": self.total_steps,
            "actors.num_envs": self.actors.num_envs,
            "algo.rollout_length": self.algo.rollout_length,
            "model.width": self.model.width,
            "env.frame_skip": self.env.frame_skip,
            "env.frame_stack": self.env.frame_stack,
            "env.image_size": self.env.image_size,
            "logging.return_window": self.logging.return_window,
            "checkpoint.keep_last": self.checkpoint.keep_last,
            "max_nonfinite_updates": self.max_nonfinite_updates,
            "algo.update_epochs": self.algo.update_epochs,
            "algo.num_minibatches": self.algo.num_minibatches,
            "optim.kron_max_size_triangular": self.optim.kron_max_size_triangular,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"{name} = {value} is invalid: it must be a positive integer (1 or more).")
        if self.actors.procs < -1:
            raise ConfigError(f"actors.procs = {self.actors.procs} is invalid: 0 (synchronous), -1 (auto) or a positive number of processes.")
        if self.actors.procs > self.actors.num_envs:
            raise ConfigError(
                f"actors.procs = {self.actors.procs} exceeds actors.num_envs = {self.actors.num_envs}: every actor process needs at least one environment."
            )
        for name, value in (("actors.env_groups", self.actors.env_groups), ("actors.slots_per_actor", self.actors.slots_per_actor)):
            if value < 1:
                raise ConfigError(f"{name} = {value} is invalid: it must be 1 or more.")
        if self.actors.heartbeat_timeout_s <= 0:
            raise ConfigError(f"actors.heartbeat_timeout_s = {self.actors.heartbeat_timeout_s} is invalid: it must be positive.")
        if self.actors.max_policy_lag < -1:
            raise ConfigError(f"actors.max_policy_lag = {self.actors.max_policy_lag} is invalid: 0 or more updates, "
                              "or -1 for the algorithm's own bound.")
        non_negative = {
            "model.depth": self.model.depth,
            "env.max_episode_steps": self.env.max_episode_steps,
            "env.noop_max": self.env.noop_max,
            "actors.num_threads": self.actors.num_threads,
            "torch_threads": self.torch_threads,
            "checkpoint.interval_steps": self.checkpoint.interval_steps,
            "optim.anneal_steps": self.optim.anneal_steps,
            "algo.max_grad_norm": self.algo.max_grad_norm,
            "algo.reward_clip": self.algo.reward_clip,
            "algo.entropy_coef": self.algo.entropy_coef,
            "algo.value_coef": self.algo.value_coef,
            "logging.interval_s": self.logging.interval_s,
            "logging.diag_interval": self.logging.diag_interval,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name} = {value} is invalid: it must be 0 or more.")
        if not 0.0 <= self.algo.gamma <= 1.0:
            raise ConfigError(f"algo.gamma = {self.algo.gamma} is invalid: a discount lies in [0, 1].")
        if not 0.0 <= self.env.sticky_action_prob < 1.0:
            raise ConfigError(f"env.sticky_action_prob = {self.env.sticky_action_prob} is invalid: a probability in [0, 1).")
        for name, value in (("algo.td_lambda", self.algo.td_lambda), ("algo.epsilon_start", self.algo.epsilon_start),
                            ("algo.epsilon_end", self.algo.epsilon_end), ("algo.eval_epsilon", self.algo.eval_epsilon)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} = {value} is invalid: it lies in [0, 1].")
        if not 0.0 < self.algo.epsilon_fraction <= 1.0:
            raise ConfigError(f"algo.epsilon_fraction = {self.algo.epsilon_fraction} is invalid: a fraction of total_steps in (0, 1].")
        if self.algo.clip_coef <= 0:
            raise ConfigError(f"algo.clip_coef = {self.algo.clip_coef} is invalid: the ratio clip must be positive (0.1 or 0.2 are usual).")
        if self.model.torso == "multiskip" and self.model.depth < 1:
            raise ConfigError(f"model.depth = {self.model.depth} is invalid for model.torso = 'multiskip': it needs at least 1 residual block.")
        if self.optim.kron_lr_divisor <= 0:
            raise ConfigError(f"optim.kron_lr_divisor = {self.optim.kron_lr_divisor} is invalid: it must be positive (the paper's rule is 3).")
        if self.optim.lr <= 0 or self.effective_lr <= 0:
            raise ConfigError(f"optim.lr = {self.optim.lr} is invalid: the learning rate must be positive ({self.lr_arithmetic}).")
        if self.algo.loss_scale <= 0:
            raise ConfigError(f"algo.loss_scale = {self.algo.loss_scale} is invalid: it must be positive.")
        batch = self.actors.num_envs * self.algo.rollout_length
        if self.total_steps < batch:
            raise ConfigError(
                f"total_steps = {self.total_steps} is smaller than one update's batch: actors.num_envs "
                f"({self.actors.num_envs}) x algo.rollout_length ({self.algo.rollout_length}) = {batch} agent steps. "
                f"Raise --steps to at least {batch} or use fewer actors."
            )
        if self.algo.name in ("ppo", "pqn") and self.algo.num_minibatches > batch:
            raise ConfigError(
                f"algo.num_minibatches = {self.algo.num_minibatches} exceeds the samples of one update: actors.num_envs "
                f"({self.actors.num_envs}) x algo.rollout_length ({self.algo.rollout_length}) = {batch}. "
                f"Use at most {batch} minibatches."
            )
        self._validate_sac()
        self._validate_qrdqn()
        for name in ("device", "actors.device"):
            check_device(name, self.device if name == "device" else self.actors.device)
        return self

    def _validate_sac(self) -> None:
        algo, model, optim, replay = self.algo, self.model, self.optim, self.replay
        if model.encoder == "simbav2" and algo.name != "sac":
            raise ConfigError(f"model.encoder = 'simbav2' builds SAC's actor and critics, but algo.name = {algo.name!r}: "
                              f"use algo.name=sac, or an encoder among auto, mlp, nips_cnn, nature_cnn.")
        if algo.name == "sac" and model.encoder in ("nips_cnn", "nature_cnn"):
            raise ConfigError(f"model.encoder = {model.encoder!r} is for images; algo.name = 'sac' takes vector observations: "
                              f"use model.encoder=simbav2 (SimbaV2) or mlp (the LayerNorm MLP baseline).")
        if algo.name in ("sac", "qrdqn") and algo.loss_scale != 1.0:
            raise ConfigError(f"algo.loss_scale = {algo.loss_scale} is not used by algo.name = {algo.name!r} (its loss is "
                              "not scaled): remove it, or scale the learning rate (optim.lr) instead.")
        if algo.name == "sac" and algo.reward_clip:
            raise ConfigError(f"algo.reward_clip = {algo.reward_clip} is not used by algo.name = 'sac', which scales "
                              "rewards instead (algo.reward_scale_gmax, SimbaV2's): remove it.")
        if algo.name == "sac" and model.init != "orthogonal":
            raise ConfigError(f"model.init = {model.init!r} is for the actor-critic and Q-networks; algo.name = 'sac' "
                              "initialises its own networks (SimbaV2's or orthogonal): remove model.init.")
        if not 0.0 <= optim.final_lr_scale <= 1.0:
            raise ConfigError(f"optim.final_lr_scale = {optim.final_lr_scale} is invalid: a fraction of the start LR in [0, 1].")
        if algo.utd_ratio <= 0:
            raise ConfigError(f"algo.utd_ratio = {algo.utd_ratio} is invalid: gradient steps per transition must be positive (SimbaV2: 2).")
        if not 0.0 < algo.tau <= 1.0:
            raise ConfigError(f"algo.tau = {algo.tau} is invalid: the target update fraction lies in (0, 1] (SimbaV2: 0.005).")
        if algo.init_temperature <= 0:
            raise ConfigError(f"algo.init_temperature = {algo.init_temperature} is invalid: the temperature must be positive (SimbaV2: 0.01).")
        if algo.num_atoms < 2:
            raise ConfigError(f"algo.num_atoms = {algo.num_atoms} is invalid: a categorical critic needs at least 2 atoms (SimbaV2: 101).")
        if algo.v_min >= algo.v_max:
            raise ConfigError(f"algo.v_min = {algo.v_min} must be below algo.v_max = {algo.v_max}.")
        for name, value in (("algo.warmup_steps", algo.warmup_steps), ("algo.reward_scale_gmax", algo.reward_scale_gmax),
                            ("model.critic_depth", model.critic_depth)):
            if value < 0:
                raise ConfigError(f"{name} = {value} is invalid: it must be 0 or more.")
        for name, value in (("replay.capacity", replay.capacity), ("replay.minibatch_size", replay.minibatch_size),
                            ("model.critic_width", model.critic_width)):
            if value < 1:
                raise ConfigError(f"{name} = {value} is invalid: it must be a positive integer (1 or more).")

    def _validate_qrdqn(self) -> None:
        algo, replay = self.algo, self.replay
        for name, value in (("algo.num_quantiles", algo.num_quantiles), ("algo.n_step", algo.n_step),
                            ("algo.target_period", algo.target_period)):
            if value < 1:
                raise ConfigError(f"{name} = {value} is invalid: it must be a positive integer (1 or more).")
        for name, value in (("algo.epsilon_decay_steps", algo.epsilon_decay_steps), ("algo.epsilon_alpha", algo.epsilon_alpha),
                            ("replay.priority_exponent", replay.priority_exponent)):
            if value < 0:
                raise ConfigError(f"{name} = {value} is invalid: it must be 0 or more.")
        if algo.kappa <= 0:
            raise ConfigError(f"algo.kappa = {algo.kappa} is invalid: the quantile-Huber threshold must be positive (Dopamine: 1).")
        if not 0.0 < algo.epsilon_base <= 1.0:
            raise ConfigError(f"algo.epsilon_base = {algo.epsilon_base} is invalid: an exploration rate in (0, 1] (Ape-X: 0.4).")
        if not 0.0 <= replay.importance_exponent <= 1.0:
            raise ConfigError(f"replay.importance_exponent = {replay.importance_exponent} is invalid: it lies in [0, 1] (Dopamine: 0.5).")
        if algo.name != "qrdqn":
            return
        rows, needed = replay.capacity // self.actors.num_envs, self.algo.rollout_length + self.env.frame_stack + algo.n_step
        if rows < needed:
            raise ConfigError(
                f"replay.capacity = {replay.capacity} is too small: it holds {replay.capacity} // actors.num_envs "
                f"({self.actors.num_envs}) = {rows} agent steps per env, and one rollout plus a frame stack and an n-step window "
                f"need algo.rollout_length ({self.algo.rollout_length}) + env.frame_stack ({self.env.frame_stack}) + algo.n_step "
                f"({algo.n_step}) = {needed}. Raise replay.capacity to at least {needed * self.actors.num_envs}.")
        if algo.warmup_steps > replay.capacity:
            raise ConfigError(f"algo.warmup_steps = {algo.warmup_steps} exceeds replay.capacity = {replay.capacity}: "
                              f"the replay would never hold enough agent steps for learning to start.")
        if replay.save_with_checkpoint:
            raise ConfigError("replay.save_with_checkpoint = true is supported by algo.name = 'sac' only: qrdqn refills its "
                              "frame replay for algo.warmup_steps agent steps after a resume. Set replay.save_with_checkpoint=false.")


def check_device(name: str, value: str) -> None:
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]+", value):
        return
    raise ConfigError(f"{name} = {value!r} is not a device: valid choices are auto, cpu, cuda, cuda:N.")


# ---------------------------------------------------------------------------- building


def _field_map(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _nearest(name: str, choices: typing.Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Valid keys: {', '.join(sorted(choices))}."


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's annotation, converting only where lossless."""
    hints = annotation
    origin = typing.get_origin(hints)
    if origin is Literal:
        choices = typing.get_args(hints)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{path} = {value!r} is not a valid choice.{hint} Valid choices: {', '.join(map(str, choices))}.")
        return value
    if hints is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} = {value!r} has the wrong type: expected true or false.")
    if hints in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads 3e-4 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if hints is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path} = {value!r} has the wrong type: expected an integer.")
    if hints is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # NaN passes every range check in validate(): refuse it here
                raise ConfigError(f"{path} = {value!r} is invalid: expected a finite number, not NaN or infinity.")
            return float(value)
        raise ConfigError(f"{path} = {value!r} has the wrong type: expected a number.")
    if hints is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path} = {value!r} has the wrong type: expected a string.")
    raise TypeError(f"unsupported annotation {hints!r} for {path}")  # a bug in this file, not user input


_TYPE_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _TYPE_HINTS:
        _TYPE_HINTS[cls] = typing.get_type_hints(cls)
    return _TYPE_HINTS[cls]


def _apply_mapping(obj: Any, mapping: Any, prefix: str = "") -> None:
    where = prefix.rstrip(".") or "the configuration"
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {mapping!r}.")
    fields = _field_map(type(obj))
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str) or key not in fields:
            raise ConfigError(f"Unknown configuration key {path!r}.{_nearest(str(key), fields)}")
        annotation = _hints(type(obj))[key]
        if dataclasses.is_dataclass(annotation):
            _apply_mapping(getattr(obj, key), value, f"{path}.")
        else:
            setattr(obj, key, _coerce(path, value, annotation))


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, annotation in _hints(cls).items():
        if dataclasses.is_dataclass(annotation):
            keys += all_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def set_override(cfg: Config, assignment: str) -> None:
    """Apply one ``section.key=value`` override; the value is parsed as YAML (1e-3, true, [..])."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r} is malformed: write it as section.key=value, e.g. --set algo.gamma=0.995.")
    path, raw = assignment.split("=", 1)
    path = path.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = path.split(".")
    obj: Any = cfg
    for i, part in enumerate(parts):
        fields = _field_map(type(obj))
        here = ".".join(parts[: i + 1])
        if part not in fields:
            raise ConfigError(f"Unknown configuration key {here!r} in --set {assignment!r}.{_nearest(here, _keys_under(parts[:i]))}")
        annotation = _hints(type(obj))[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(annotation):
                raise ConfigError(f"--set {assignment!r} names the section {here!r}, not a key: choose one of {', '.join(all_keys(annotation, here + '.'))}.")
            setattr(obj, part, _coerce(here, value, annotation))
        elif not dataclasses.is_dataclass(annotation):
            raise ConfigError(f"--set {assignment!r}: {here!r} is a value, not a section.")
        else:
            obj = getattr(obj, part)


def _keys_under(parts: list[str]) -> list[str]:
    prefix = ".".join(parts) + "." if parts else ""
    return [k for k in all_keys() if k.startswith(prefix)]


def resolve_recipe(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / name_or_path, CONFIG_DIR / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    recipes = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(path.stem, recipes, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"--config {name_or_path!r}: no such file and no recipe of that name.{hint} Recipes in configs/: {', '.join(recipes)}.")


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Cannot read configuration file {str(path)!r}: {exc.strerror}.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Configuration file {str(path)!r} cannot be decoded as UTF-8 text (byte {exc.start}): "
                          "it is not a YAML file.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"Configuration file {str(path)!r} is not valid YAML{where}: {getattr(exc, 'problem', exc)}.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Configuration file {str(path)!r} must hold a mapping of sections (env:, algo:, ...), not {type(data).__name__}.")
    return data


def from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    _apply_mapping(cfg, data)
    return cfg


def build_config(recipe: str | None = None, flags: dict[str, Any] | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults -> recipe -> named flags (dotted keys) -> ``--set`` overrides, then validate."""
    cfg = Config()
    _apply_mapping(cfg, load_yaml(resolve_recipe(recipe or DEFAULT_RECIPE)))
    for path, value in (flags or {}).items():
        if value is not None:
            set_override_value(cfg, path, value)
    for assignment in overrides:
        set_override(cfg, assignment)
    return cfg.validate()


def set_override_value(cfg: Config, path: str, value: Any) -> None:
    section, _, key = path.rpartition(".")
    obj = getattr(cfg, section) if section else cfg
    setattr(obj, key, _coerce(path, value, _hints(type(obj))[key]))


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config mapping under dotted keys: {"algo": {"gamma": 0.99}} -> {"algo.gamma": 0.99}."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def dump_yaml(cfg: Config) -> str:
    """The resolved configuration as YAML, itself a valid recipe for ``--config``."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_yaml(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(dump_yaml(cfg))


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every field: the source of the CLI's config reference."""
    rows = []
    instance = cls()
    for f in dataclasses.fields(cls):
        annotation = _hints(cls)[f.name]
        if dataclasses.is_dataclass(annotation):
            rows += describe(annotation, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", getattr(instance, f.name), f.metadata.get("help", "")))
    return rows


__all__ = [
    "Config",
    "ConfigError",
    "build_config",
    "from_dict",
    "load_yaml",
    "save_yaml",
    "set_override",
    "describe",
]
