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
import tempfile
import typing
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from . import registry

# parallel_rl/configs links to the top-level configs/ in a checkout and is copied into wheels
CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_RECIPE = "paac_atari.yaml"


class ConfigError(ValueError):
    """A configuration value is invalid; the message is meant for the user as it is."""


def setting(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    """A config field with its help text (shown by `parallel-rl config` and in errors)."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class EnvConfig:
    id: str = setting("Environment id: any EnvPool task (`parallel-rl envs` lists them) or a registered gymnasium id.", "Pong-v5")
    backend: Literal["auto", "envpool", "ale", "gymnasium"] = setting(
        "Which library steps the environments: envpool, ale (ALE's own vector env, Atari only), gymnasium; `auto` prefers "
        "EnvPool, then ALE for Atari where EnvPool is absent.", "auto")
    max_episode_steps: int = setting("Truncate episodes after this many agent steps; 0 keeps the environment's own limit.", 0)
    frame_skip: int = setting("Atari: action repeat, max-pooling the last two frames.", 4)
    action_repeat: int = setting(
        "Other tasks: each action is applied this many times, its rewards summed, stopping early where the episode ends "
        "(the ActionRepeat wrapper of SimbaV2's code, 2 on DMC). An agent step is one decision: max_episode_steps and "
        "total_steps count decisions. Atari repeats with frame_skip.", 1)
    frame_stack: int = setting("Atari: number of stacked frames in an observation.", 4)
    image_size: int = setting("Atari: observations are image_size x image_size grayscale.", 84)
    noop_max: int = setting("Atari: 1 to this many no-op actions at the start of an episode (the fewest is 1; ALE's backend plays 0 to this many where env.fire_reset is off).", 30)
    sticky_action_prob: float = setting("Atari: probability of repeating the previous action (0 = PAAC's deterministic ALE).", 0.0)
    episodic_life: bool = setting("Atari: a life lost ends the learning episode (no bootstrap across it); reported episodes "
                                "(charts/episodic_return, evaluation) still span whole games.", False)
    fire_reset: bool = setting("Atari: press FIRE after reset in games that need it.", True)


@dataclass
class ActorsConfig:
    num_envs: int = setting("Number of environments stepped in parallel (PAAC's n_e); `--actors` sets it.", 32)
    num_threads: int = setting("EnvPool worker threads; 0 sizes them from the cores: all of them acting inline (at most one "
                               "per env), with K actor processes the cores left after the learner, split over them.", 0)
    device: str = setting("Device for policy inference in actor processes: auto, cpu, cuda, cuda:N.", "auto")
    procs: int = setting("Actor processes (K) sharing the environments; 0 runs the actor loop inline (synchronous, exact); -1 picks K from the core count (inline below 4 cores, one per 4 cores above, at most 8).", -1)
    env_groups: int = setting("Groups of envs per actor stepped alternately, so inference for one overlaps stepping of the "
                              "other; 0 picks 1 when acting inline on a CPU learner (no core is free to overlap), 2 otherwise.", 0)
    slots_per_actor: int = setting("Shared-memory rollout slots per actor process (2 = double buffering).", 2)
    max_policy_lag: int = setting(
        "Actor processes wait for weights at most this many updates old before acting (0: the newest, exactly as K = 0; "
        "QR-DQN and SAC learn a rollout in several updates, all acted before the first: at least that count less one); "
        "-1 takes the algorithm's own: 0 for PAAC, PPO and PQN, unbounded for IMPALA (V-trace corrects), QR-DQN and SAC "
        "(replay is off-policy). The slots bound the lag at about actors.slots_per_actor anyway.", -1)
    deterministic_lag: bool = setting("Asynchronous mode: actor processes act with exactly the previous policy version, making seeded runs "
                                    "reproducible while acting overlaps learning.", False)
    heartbeat_timeout_s: float = setting("An actor silent for this long is reported as stalled (at least 1 s: each beats every 0.5 s).", 3.0)
    restart_actors: bool = setting("Restart a dead or stalled actor process instead of stopping the run.", False)


@dataclass
class ModelConfig:
    encoder: Literal["auto", "mlp", "nips_cnn", "nature_cnn", "simbav2"] = setting(
        "Observation encoder; `auto` picks nature_cnn for images and mlp for vectors. SAC: mlp (LayerNorm MLP actor and "
        "critics, the baseline) or simbav2 (hyperspherical embedding and LERP residual blocks).", "auto")
    torso: Literal["mlp", "multiskip"] = setting(
        "Torso after the encoder: mlp (depth x Linear -> [LayerNorm] -> ReLU) or multiskip (the multi-skip residual MLP: "
        "g = LN(Linear(features)) added into each of depth residual blocks, then Linear -> LN -> ReLU).", "mlp")
    width: int = setting("Units per hidden layer of the torso (after the CNN for images); the depth-width sweep uses 512, 1536, 2560.", 256)
    depth: int = setting("Hidden layers of the mlp torso, or residual blocks of the multiskip torso (2 Linear layers each; 1/3/5 blocks = 4/8/12 layers).", 1)
    layer_norm: bool = setting("LayerNorm after every hidden Linear and every convolution (over C,H,W).", True)
    init: Literal["orthogonal", "fan_in_uniform"] = setting(
        "Weight initialisation of the actor-critic and Q-networks: orthogonal (gain sqrt 2, heads 0.01 / value 1, zero "
        "biases: CleanRL's) or fan_in_uniform (weights and biases U(+-1/sqrt(fan_in)), heads included: PAAC's code).",
        "orthogonal")
    critic_width: int = setting("SAC: units per critic layer (model.width sizes the actor; SimbaV2: critic 512, actor 128).", 512)
    critic_depth: int = setting("SAC: hidden layers (mlp) or LERP residual blocks (simbav2) of each critic (SimbaV2: 2; actor 1 via model.depth).", 2)
    obs_norm: bool = setting("SAC: normalise observations by their running mean and variance (the actors receive the statistics with the weights).", True)


@dataclass
class AlgoConfig:
    """The keys every algorithm has. Each algorithm extends it with its own in its file
    (``algos/<name>.py``, the class's ``config_class``): the ``algo:`` section of a recipe is
    checked against the chosen algorithm's keys only, so a key it would ignore is an error."""

    name: str = setting(
        "Algorithm: paac (n-step advantage actor-critic), impala (V-trace off-policy correction), ppo (clipped surrogate, GAE), "
        "pqn (parallel Q(lambda), no replay, no target network), sac (soft actor-critic with replay, continuous actions; "
        "SimbaV2 with model.encoder=simbav2), qrdqn (quantile-regression DQN with a frame replay, discrete actions), or "
        "module:Class for an algorithm defined outside the package (see parallel_rl/contracts.py).", "paac")
    rollout_length: int = setting("Agent steps per environment between updates (PAAC's t_max).", 5)
    gamma: float = setting("Discount factor.", 0.99)
    max_grad_norm: float = setting("Global gradient-norm clip; 0 disables it.", 3.0)

    # keys other algorithms have that this one refuses with a pointer to what to do instead
    refused: typing.ClassVar[dict[str, str]] = {}

    def validate(self, cfg: Config) -> None:
        """This section's own checks (the base checks the shared keys); ``cfg`` for cross-section arithmetic."""
        if self.rollout_length < 1:
            raise ConfigError(f"algo.rollout_length = {self.rollout_length} is invalid: it must be a positive integer (1 or more).")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"algo.gamma = {self.gamma} is invalid: a discount lies in [0, 1].")
        if self.max_grad_norm < 0:
            raise ConfigError(f"algo.max_grad_norm = {self.max_grad_norm} is invalid: it must be 0 or more.")

    def segment_length(self, num_envs: int) -> int:
        """Agent steps per environment in one update's batch. On-policy algorithms learn from
        whole rollouts; replay-based ones publish weights more often (``publish_interval``)."""
        return self.rollout_length


# float32's largest value x (1 - Adam's beta1 0.9): from this learning rate on, Adam's first step
# (lr / bias correction) is no float32, and torch raises inside the optimizer
LARGEST_STEPPABLE_LR = 3.4028234663852886e38 * 0.1


def check_non_negative(values: dict[str, float]) -> None:
    for name, value in values.items():
        if value < 0:
            raise ConfigError(f"{name} = {value} is invalid: it must be 0 or more.")


def check_positive_int(values: dict[str, int]) -> None:
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"{name} = {value} is invalid: it must be a positive integer (1 or more).")


def check_unit_interval(values: dict[str, float]) -> None:
    for name, value in values.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} = {value} is invalid: it lies in [0, 1].")


@dataclass
class OptimConfig:
    name: Literal["rmsprop", "rmsprop_tf", "adam", "radam", "kron"] = setting(
        "Optimizer: rmsprop, adam, radam (torch.optim), rmsprop_tf (TensorFlow's RMSProp, PAAC's: eps inside the square root, "
        "mean square starting at 1) or kron (PSGD-Kron, preconditioned SGD with Kronecker-factored preconditioners).", "rmsprop")
    lr: float = setting("Learning rate (per environment when lr_per_env is set; divided by kron_lr_divisor for kron).", 0.0007)
    kron_lr_divisor: float = setting("Kron: its learning rate is optim.lr / this (the paper's rule: a third of the base LR).", 3.0)
    kron_max_size_triangular: int = setting(
        "Kron: a weight dimension larger than this gets a diagonal preconditioner factor instead of a triangular one "
        "(far cheaper; the default keeps every width up to 8192 triangular, as the paper's Kron does).", 8192)
    lr_per_env: bool = setting("Multiply lr by actors.num_envs (PAAC's rule: 0.0007 x n_e).", True)
    anneal_lr: bool = setting("Decay the learning rate linearly to 0 (or final_lr_scale x LR) over anneal_steps.", True)
    anneal_steps: int = setting("Agent steps the LR decay spans (0: total_steps); PAAC's code anneals over 80M whatever the budget.", 0)
    final_lr_scale: float = setting("With anneal_lr the decay ends at this fraction of the start LR instead of 0 (SimbaV2: 0.5, 1e-4 -> 5e-5).", 0.0)
    alpha: float = setting("RMSProp smoothing constant.", 0.99)
    eps: float = setting("Optimizer epsilon (RMSProp 0.1 in PAAC).", 0.1)


@dataclass
class ReplayConfig:
    capacity: int = setting("SAC, QR-DQN: transitions the replay buffer holds (QR-DQN: agent steps, capacity / actors.num_envs per env), on the "
                          "learner's GPU when it fits in half its free memory, else host memory.", 1_000_000)
    minibatch_size: int = setting("SAC, QR-DQN: transitions per gradient step, sampled from the replay buffer (SimbaV2: 256; "
                                "QR-DQN: Dopamine 32, Small Batch 8).", 256)
    save_with_checkpoint: bool = setting("SAC: write the replay buffer into every checkpoint, so a resume continues with the same data (large).", False)
    prioritized: bool = setting("QR-DQN: sample transitions in proportion to priority^priority_exponent (a sum tree) instead of uniformly.", False)
    priority_exponent: float = setting("QR-DQN, prioritized: priority = (loss + 1e-6)^this; 0 is uniform (Dopamine: 0.5).", 0.5)
    importance_exponent: float = setting("QR-DQN, prioritized: importance-sampling weights (N P(i))^-this, scaled to a largest weight of 1 (Dopamine: 0.5).", 0.5)


@dataclass
class LoggingConfig:
    run_root: str = setting("Folder under which run directories are created.", "runs")
    interval_s: float = setting("Seconds between TensorBoard scalar writes and console refreshes.", 5.0)
    return_window: int = setting("Completed episodes averaged for the console's and checkpoint's recent return.", 20)
    console: bool = setting("Print a progress line with steps, SPS, recent return and ETA.", True)
    diag_interval: int = setting(
        "Gradient-flow diagnostics (diag/grad_norm/<layer>, diag/feature_norm, diag/dormant_fraction, diag/effective_lr) "
        "on one minibatch every this many updates (every algorithm but SAC); 0 turns them off.", 100)


@dataclass
class CheckpointConfig:
    interval_steps: int = setting("Agent steps between periodic checkpoints; 0 saves only at the end.", 1_000_000)
    keep_last: int = setting("Periodic checkpoints kept on disk (the newest ones).", 3)


@dataclass
class PerfConfig:
    compile: Literal["auto", True, False] = setting(
        "torch.compile the policy's network (the forward pass acting and the learner's losses share), in the learner and "
        "in actor processes. auto: on where it was measured to win on top of perf.channels_last, a convolutional encoder "
        "running on a CPU, learning from each rollout in epochs of minibatches (PPO 1.03x, PQN 1.08x; not PAAC's or "
        "IMPALA's one update per rollout, 1.00x, nor QR-DQN's replayed minibatches, 0.94x), in a run of at least 1M "
        "agent steps (start-up costs 10 to 30 s), where inductor can build CPU code (a C++ compiler, Python's headers, "
        "OpenMP); off for MLPs (0.90x on CartPole) and on GPUs until the GPU check shows a win at the recipes' batch "
        "sizes (docs/benchmarks.md, perf.compile).", "auto")
    cuda_graphs: bool = setting(
        "CUDA graphs: the network compiles with torch.compile's mode reduce-overhead where it runs on CUDA, so that each "
        "acting step and each minibatch's forward and backward replay as one recorded graph instead of hundreds of "
        "kernel launches (LeanRL's lever for small batches). Needs the learner on CUDA; acting replicas on a CPU compile "
        "as perf.compile says. Off by default until the GPU check shows a win (benchmarks/gpu_check.py).", False)
    amp: Literal["auto", "off", "bf16"] = setting(
        "bf16: the policy's network runs its forward pass (acting and the learner's losses) under bfloat16 autocast, "
        "its outputs cast back to float32 before any loss, weights and optimizer state kept in float32; losses equal "
        "float32's to about 2 significant digits. It pays only where the device has bf16 units of its own: CPUs with "
        "AVX512_BF16 or AMX (Pong on 2 such cores: PPO 1.30x, PQN 1.23x, PAAC 1.17x the agent steps/s of float32), GPUs with bf16 "
        "tensor cores at large batches (an H200: 1.26x at batch 4096, slower at 256; docs/benchmarks.md, perf.amp). "
        "Elsewhere bf16 is emulated, slower than float32: the layout line says so, and acting replicas there (actor "
        "processes, evaluation) keep float32. auto: bf16 for PAAC's, PPO's and PQN's convolutional encoder where the "
        "learner runs on a CPU with bf16 units (all three learn Pong with it: docs/results.md), and its actor processes "
        "follow; float32 for the other algorithms, MLPs, other CPUs and GPUs. off: float32.",
        "auto")
    channels_last: Literal["auto", True, False] = setting(
        "Run the convolutional encoder in channels-last memory layout (NHWC: its weights and the frames entering it), "
        "the layout oneDNN's CPU convolutions prefer. auto: on for a convolutional encoder on a CPU, where it was "
        "measured to win (training agent steps/s, eager: PAAC 1.15x, PPO 1.25x; compiled: 1.02x, 1.06x); off on GPUs "
        "until the GPU check measures it (docs/benchmarks.md, perf.channels_last). Results equal the default layout's within float "
        "rounding; checkpoints hold the same tensors either way.", "auto")
    optimizer_kernel: Literal["auto", "fused", "foreach", "default"] = setting(
        "fused: optim.name = adam runs torch's fused Adam (one kernel for all parameters), and an optimizer step whose loss "
        "or gradient is NaN/inf is skipped on the device (the kernel's found_inf) with no host sync; every other optimizer "
        "syncs once per step to decide. foreach: torch's multi-tensor kernel (adam, rmsprop, radam: one call per operation "
        "for all parameters); on a CPU Adam's and RMSprop's equal the loop's steps bit for bit. default: torch's own choice "
        "(multi-tensor on CUDA, a loop over the parameters on a CPU). auto: fused Adam on CUDA, and on a CPU for the "
        "replay-based QR-DQN and SAC (1.12-1.16x QR-DQN's agent steps/s there); foreach for the other algorithms' Adam and "
        "RMSprop on a CPU (the loop's very steps, faster); default otherwise (docs/benchmarks.md, perf.optimizer_kernel).",
        "auto")


@dataclass
class Config:
    total_steps: int = setting("Agent steps to train for, summed over all environments (frames = steps x frame_skip).", 10_000_000)
    seed: int = setting("Seed for environments, network initialisation and sampling.", 1)
    device: str = setting("Learner device: auto (cuda when available), cpu, cuda, cuda:N.", "auto")
    torch_threads: int = setting("torch intra-op threads in the learner process; 0: all of this rank's cores acting inline, "
                                 "cores // (K + 1) with K actor processes.", 0)
    max_nonfinite_updates: int = setting(
        "An update whose loss or gradient is NaN/inf is skipped (weights and optimizer state untouched, counted in "
        "diag/nonfinite_updates); this many in a row stop the run with exit code 1, its final checkpoint holding the last good weights.", 10)
    env: EnvConfig = setting("Environment.", factory=EnvConfig)
    actors: ActorsConfig = setting("Actors (environments) and where they run.", factory=ActorsConfig)
    model: ModelConfig = setting("Network.", factory=ModelConfig)
    algo: AlgoConfig = setting("Algorithm: its keys are those of algo.name's section (`parallel-rl config algo.` lists them).",
                             factory=lambda: algo_section(None, {}))
    optim: OptimConfig = setting("Optimizer.", factory=OptimConfig)
    logging: LoggingConfig = setting("Logging and monitoring.", factory=LoggingConfig)
    checkpoint: CheckpointConfig = setting("Checkpoints.", factory=CheckpointConfig)
    replay: ReplayConfig = setting("Replay buffer of the off-policy algorithms.", factory=ReplayConfig)
    perf: PerfConfig = setting("Performance switches that leave results unchanged (within float tolerance).", factory=PerfConfig)

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
        """Cross-field checks; each message shows the arithmetic behind it. The algorithm's own
        keys are checked by its section (``algo.validate``)."""
        check_seed("seed", self.seed, self.actors.num_envs)
        check_path("logging.run_root =", self.logging.run_root)
        check_positive_int({
            "total_steps": self.total_steps,
            "actors.num_envs": self.actors.num_envs,
            "model.width": self.model.width,
            "env.frame_skip": self.env.frame_skip,
            "env.action_repeat": self.env.action_repeat,
            "env.frame_stack": self.env.frame_stack,
            "env.image_size": self.env.image_size,
            "logging.return_window": self.logging.return_window,
            "checkpoint.keep_last": self.checkpoint.keep_last,
            "max_nonfinite_updates": self.max_nonfinite_updates,
            "optim.kron_max_size_triangular": self.optim.kron_max_size_triangular,
            "replay.capacity": self.replay.capacity,
            "replay.minibatch_size": self.replay.minibatch_size,
            "model.critic_width": self.model.critic_width,
        })
        if self.actors.procs < -1:
            raise ConfigError(f"actors.procs = {self.actors.procs} is invalid: 0 (synchronous), -1 (auto) or a positive number of processes.")
        if self.actors.procs > self.actors.num_envs:
            raise ConfigError(
                f"actors.procs = {self.actors.procs} exceeds actors.num_envs = {self.actors.num_envs}: every actor process needs at least one environment."
            )
        if self.actors.env_groups < 0:
            raise ConfigError(f"actors.env_groups = {self.actors.env_groups} is invalid: 0 (auto) or a positive number of groups.")
        if self.actors.slots_per_actor < 1:
            raise ConfigError(f"actors.slots_per_actor = {self.actors.slots_per_actor} is invalid: it must be 1 or more.")
        if not self.actors.heartbeat_timeout_s >= 2 * ACTOR_HEARTBEAT_S:
            raise ConfigError(f"actors.heartbeat_timeout_s = {self.actors.heartbeat_timeout_s} is invalid: actor processes send a "
                              f"heartbeat every {ACTOR_HEARTBEAT_S:g} s, so a timeout under {2 * ACTOR_HEARTBEAT_S:g} s would "
                              "report a working actor as stalled.")
        if self.actors.max_policy_lag < -1:
            raise ConfigError(f"actors.max_policy_lag = {self.actors.max_policy_lag} is invalid: 0 or more updates, "
                              "or -1 for the algorithm's own bound.")
        check_non_negative({
            "model.depth": self.model.depth,
            "model.critic_depth": self.model.critic_depth,
            "env.max_episode_steps": self.env.max_episode_steps,
            "actors.num_threads": self.actors.num_threads,
            "torch_threads": self.torch_threads,
            "checkpoint.interval_steps": self.checkpoint.interval_steps,
            "optim.anneal_steps": self.optim.anneal_steps,
            "logging.interval_s": self.logging.interval_s,
            "logging.diag_interval": self.logging.diag_interval,
            "replay.priority_exponent": self.replay.priority_exponent,
        })
        if self.env.noop_max < 1:
            # EnvPool draws from [0, noop_max - 1]: at 0 that range is empty (undefined in C++)
            raise ConfigError(f"env.noop_max = {self.env.noop_max} is invalid: Atari episodes start with 1 to noop_max "
                              "no-ops (with env.fire_reset, FIRE takes the place of one), so the fewest is 1: set "
                              "env.noop_max=1 for starts without no-ops (sticky actions still vary them).")
        if not 0.0 <= self.env.sticky_action_prob < 1.0:
            raise ConfigError(f"env.sticky_action_prob = {self.env.sticky_action_prob} is invalid: a probability in [0, 1).")
        if self.model.torso == "multiskip" and self.model.depth < 1:
            raise ConfigError(f"model.depth = {self.model.depth} is invalid for model.torso = 'multiskip': it needs at least 1 residual block.")
        if self.optim.kron_lr_divisor <= 0:
            raise ConfigError(f"optim.kron_lr_divisor = {self.optim.kron_lr_divisor} is invalid: it must be positive (the paper's rule is 3).")
        if self.optim.lr <= 0 or self.effective_lr <= 0:
            raise ConfigError(f"optim.lr = {self.optim.lr} is invalid: the learning rate must be positive ({self.lr_arithmetic}).")
        if self.effective_lr >= LARGEST_STEPPABLE_LR:
            raise ConfigError(f"optim.lr = {self.optim.lr} is invalid: the optimizers step in float32, and Adam's first "
                              f"step, LR / (1 - beta1) = 10 x LR, overflows it from {LARGEST_STEPPABLE_LR:.3g} "
                              f"({self.lr_arithmetic}): give a learning rate below that.")
        if not 0.0 <= self.optim.alpha < 1.0:
            raise ConfigError(f"optim.alpha = {self.optim.alpha} is invalid: RMSProp's smoothing constant lies in [0, 1) "
                              "(at 1 the mean square never moves from its start; PAAC: 0.99).")
        if self.optim.eps < 0:
            raise ConfigError(f"optim.eps = {self.optim.eps} is invalid: the optimizer's epsilon must be 0 or more "
                              "(PAAC's RMSProp: 0.1; Adam: 1e-8 to 1e-5).")
        if not 0.0 <= self.optim.final_lr_scale <= 1.0:
            raise ConfigError(f"optim.final_lr_scale = {self.optim.final_lr_scale} is invalid: a fraction of the start LR in [0, 1].")
        if not 0.0 <= self.replay.importance_exponent <= 1.0:
            raise ConfigError(f"replay.importance_exponent = {self.replay.importance_exponent} is invalid: it lies in [0, 1] (Dopamine: 0.5).")
        if self.perf.optimizer_kernel == "fused" and self.optim.name != "adam":
            raise ConfigError(f"perf.optimizer_kernel = 'fused' needs optim.name = 'adam' (torch has no fused {self.optim.name}): "
                              f"use perf.optimizer_kernel=auto or default, or optim.name=adam.")
        if self.perf.optimizer_kernel == "foreach" and self.optim.name not in ("adam", "rmsprop", "radam"):
            raise ConfigError(f"perf.optimizer_kernel = 'foreach' needs torch's adam, rmsprop or radam, but optim.name = "
                              f"{self.optim.name!r} (its step is its own): use perf.optimizer_kernel=auto or default, or one of those optimizers.")
        if self.model.encoder == "simbav2" and self.algo.name != "sac":
            raise ConfigError(f"model.encoder = 'simbav2' builds SAC's actor and critics, but algo.name = {self.algo.name!r}: "
                              f"use algo.name=sac, or an encoder among auto, mlp, nips_cnn, nature_cnn.")
        self.algo.validate(self)
        batch = self.batch_size
        if self.total_steps < batch:
            raise ConfigError(
                f"total_steps = {self.total_steps} is smaller than one update's batch: actors.num_envs "
                f"({self.actors.num_envs}) x algo.rollout_length ({self.algo.rollout_length}) = {batch} agent steps. "
                f"Raise --steps to at least {batch} or use fewer actors."
            )
        for name in ("device", "actors.device"):
            check_device(name, self.device if name == "device" else self.actors.device)
        return self

    @property
    def batch_size(self) -> int:
        """Agent steps in one update's rollout: actors.num_envs x algo.rollout_length."""
        return self.actors.num_envs * self.algo.rollout_length


ACTOR_HEARTBEAT_S = 0.5  # how often an actor process tells the learner it is alive
SEED_LIMIT = 2**31 - 1  # env i's seed is seed + i, and the env libraries take 32-bit seeds


def check_seed(name: str, seed: int, num_envs: int) -> None:
    """Refuse a seed whose envs' seeds (``seed`` to ``seed + num_envs - 1``) leave the 32-bit range."""
    if not -(SEED_LIMIT + 1) <= seed <= SEED_LIMIT - (num_envs - 1):
        raise ConfigError(f"{name} = {seed} is out of range: env i is seeded with {name} + i, and the env libraries take "
                          f"32-bit seeds, so with {num_envs} env(s) it must lie in [{-(SEED_LIMIT + 1)}, {SEED_LIMIT - (num_envs - 1)}].")


def check_writable_folder(folder: Path, what: str) -> None:
    """Refuse before any work a destination whose folder cannot take a new file (tried, not
    inferred from permission bits: root passes those even on /proc)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"{what}: a file cannot be written in {str(folder)!r} ({exc.strerror or exc}); "
                          "give a path in a folder that exists and can be written.") from None


NAME_MAX, PATH_MAX = 255, 4095  # bytes of one file name and of a whole path, on Linux filesystems


def check_path(what: str, value: str) -> None:
    """Refuse a path no filesystem call can take (a NUL byte, a name or path over the limits),
    which would otherwise fail as a traceback wherever the path is first used."""
    problem = ("holds a NUL byte" if "\0" in value else
               f"is {len(value.encode())} bytes long, over the {PATH_MAX} a path may have" if len(value.encode()) > PATH_MAX else
               next((f"has a name of {len(part.encode())} bytes, over the {NAME_MAX} a file name may have"
                     for part in Path(value).parts if len(part.encode()) > NAME_MAX), None))
    if problem:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ConfigError(f"{what} {shown!r} {problem}: give {'a path without it' if 'NUL' in problem else 'a shorter path'}.")


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists: where a folder not yet made would be created."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_device(name: str, value: str) -> None:
    if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:(0|[1-9][0-9]*)", value):
        return
    raise ConfigError(f"{name} = {value!r} is not a device: valid choices are auto, cpu, cuda, cuda:N.")


# ---------------------------------------------------------------------------- building


def algorithm_class(name: str) -> type:
    """The algorithm registered as ``name`` (or at the import path ``module:Class``)."""
    try:
        return registry.lookup(name)
    except registry.UnknownAlgorithm as exc:
        names = registry.registered_names()
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"algo.name = {name!r} is not an algorithm: {exc}.{hint} Valid choices: {', '.join(names)}, "
                          "or module:Class for an algorithm defined outside the package.") from None


def algo_section(current: AlgoConfig | None, updates: dict[str, Any], where: str = "") -> AlgoConfig:
    """The ``algo:`` section after ``updates``, typed by the algorithm ``algo.name`` names.

    Every key given so far (by the recipe, flags and overrides, in order) is kept and
    checked against the chosen algorithm's section, whichever layer named the algorithm:
    ``--config paac_atari --set algo.name=impala`` keeps the recipe's keys (IMPALA has all
    of PAAC's), while a key the chosen algorithm does not have is an error naming its keys.
    """
    if not isinstance(updates, dict):
        raise ConfigError(f"algo must be a mapping of keys to values, got {updates!r}.")
    given = {**(getattr(current, "_given", {}) if current is not None else {}), **updates}
    name = given.get("name", AlgoConfig.name)
    if not isinstance(name, str):
        raise ConfigError(f"algo.name = {name!r} has the wrong type: expected an algorithm's name.")
    cls = algorithm_class(name).config_class
    section = cls()
    fields, hints = _field_map(cls), _hints(cls)
    for key, value in given.items():
        if not isinstance(key, str) or key not in fields:
            refused = f" ({cls.refused[key]})" if key in cls.refused else ""
            origin = f" in {where}" if where and key in updates else ""
            raise ConfigError(f"Unknown configuration key 'algo.{key}' for algo.name = {name!r}{refused}{origin}: each "
                              f"algorithm has its own keys (`parallel-rl config algo.` lists them all); remove it or "
                              f"choose an algorithm that has it.{_nearest(f'algo.{key}', [f'algo.{k}' for k in fields])}")
        setattr(section, key, _coerce(f"algo.{key}", value, hints[key]))
    section._given = given
    return section


def _field_map(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _nearest(name: str, choices: typing.Iterable[str]) -> str:
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{hint} Valid keys: {', '.join(sorted(choices))}."


def _as_yaml(choice: Any) -> str:
    return str(choice).lower() if isinstance(choice, bool) else str(choice)


YAML_BOOL_WORDS = {False: ("off", "no", "false"), True: ("on", "yes", "true")}


# integer keys that count agent steps, which may pass 2**31 in a long run; every other integer
# reaches EnvPool, ALE or torch as a 32-bit one
AGENT_STEP_KEYS = ("total_steps", "optim.anneal_steps", "algo.epsilon_decay_steps", "algo.warmup_steps", "checkpoint.interval_steps")


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's annotation, converting only where lossless."""
    hints = annotation
    origin = typing.get_origin(hints)
    if origin is Literal:
        choices = typing.get_args(hints)
        if isinstance(value, bool) and not any(type(choice) is bool for choice in choices):
            # YAML 1.1 reads off/on/no/yes as booleans: give back the choice that was written
            words = [choice for choice in choices if isinstance(choice, str) and choice.lower() in YAML_BOOL_WORDS[value]]
            value = words[0] if len(words) == 1 else value
        if not any(type(value) is type(choice) and value == choice for choice in choices):  # 1 is not true
            close = difflib.get_close_matches(str(value), [_as_yaml(c) for c in choices], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            if isinstance(value, bool) and not any(type(choice) is bool for choice in choices):
                hint += " (YAML reads on/off, yes/no and true/false as booleans: write one of the choices.)"
            raise ConfigError(f"{path} = {value!r} is not a valid choice.{hint} Valid choices: {', '.join(map(_as_yaml, choices))}.")
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
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{path} = {value!r} has the wrong type: expected an integer.")
        limit = 2**63 - 1 if path in AGENT_STEP_KEYS else 2**31 - 1
        if not -limit - 1 <= value <= limit:
            raise ConfigError(f"{path} = {value} is out of range: it must lie within [{-limit - 1}, {limit}] (a "
                              f"{'64' if limit > 2**31 else '32'}-bit integer, as the environment and torch libraries take it).")
        return value
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
        if annotation is AlgoConfig:
            obj.algo = algo_section(obj.algo, value)
        elif dataclasses.is_dataclass(annotation):
            _apply_mapping(getattr(obj, key), value, f"{path}.")
        else:
            setattr(obj, key, _coerce(path, value, annotation))


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, annotation in ((f.name, _hints(cls)[f.name]) for f in dataclasses.fields(cls)):
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
    except (yaml.YAMLError, RecursionError):  # not YAML, or nested past the parser's depth: the text itself
        value = raw
    parts = path.split(".")
    if parts[0] == "algo" and len(parts) == 2:
        cfg.algo = algo_section(cfg.algo, {parts[1]: value}, f"--set {assignment!r}")
        return
    obj: Any = cfg
    for i, part in enumerate(parts):
        fields = _field_map(type(obj))
        here = ".".join(parts[: i + 1])
        if part not in fields:
            raise ConfigError(f"Unknown configuration key {here!r} in --set {assignment!r}.{_nearest(here, _keys_under(parts[:i], cfg))}")
        annotation = _hints(type(obj))[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(annotation):
                raise ConfigError(f"--set {assignment!r} names the section {here!r}, not a key: choose one of {', '.join(all_keys(annotation, here + '.'))}.")
            setattr(obj, part, _coerce(here, value, annotation))
        elif not dataclasses.is_dataclass(annotation):
            raise ConfigError(f"--set {assignment!r}: {here!r} is a value, not a section.")
        else:
            obj = getattr(obj, part)


def _keys_under(parts: list[str], cfg: Config) -> list[str]:
    """``cfg``'s keys under the section ``parts``: its algorithm's own among them."""
    prefix = ".".join(parts) + "." if parts else ""
    return [k for k in flatten(cfg.to_dict()) if k.startswith(prefix)]


def recipe_names() -> list[str]:
    """The shipped recipes, by the name ``--config`` takes."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_recipe(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / name_or_path, CONFIG_DIR / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    recipes = recipe_names()
    close = difflib.get_close_matches(path.stem, recipes, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"--config {name_or_path!r}: no such file and no recipe of that name.{hint} Recipes in configs/: {', '.join(recipes)}.")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a mapping that names a key twice is an error, not its last value."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                break  # the base constructor refuses an unhashable key with its own ConstructorError
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} appears twice in one mapping "
                                                        "(the last would silently win)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml_file_text(text: str):
    """A YAML file's text as data, a key named twice in one mapping refused (``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds plain data only


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Cannot read configuration file {str(path)!r}: {exc.strerror}.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Configuration file {str(path)!r} cannot be decoded as UTF-8 text (byte {exc.start}): "
                          "it is not a YAML file.") from None
    try:
        data = parse_yaml_file_text(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"Configuration file {str(path)!r} is not valid YAML{where}: {getattr(exc, 'problem', exc)}.") from None
    except RecursionError:
        raise ConfigError(f"Configuration file {str(path)!r} nests its values too deeply to be read: not a configuration.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Configuration file {str(path)!r} must hold a mapping of sections (env:, algo:, ...), not {type(data).__name__}.")
    return data


def from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    _apply_mapping(cfg, data)
    return cfg


def from_saved(data: dict[str, Any]) -> tuple[Config, str | None]:
    """A run's saved configuration (its config.yaml, or a checkpoint's copy) and a one-line
    notice when it had to be migrated.

    Runs written before each algorithm owned its keys saved one flat ``algo:`` section with
    every algorithm's keys; the keys their algorithm does not have were ignored by it, so
    they are dropped. Any other unknown key is an error, as in a recipe.
    """
    algo = data.get("algo")
    if not isinstance(algo, dict):
        return from_dict(data), None
    name = algo.get("name", AlgoConfig.name)
    own = {f.name for f in dataclasses.fields(algorithm_class(name).config_class)}
    builtin = {f.name for other in registry.registered_names() for f in dataclasses.fields(registry.lookup(other).config_class)}
    dropped = sorted(key for key in algo if key not in own and key in builtin)
    if not dropped:
        return from_dict(data), None
    cfg = from_dict({**data, "algo": {key: value for key, value in algo.items() if key not in dropped}})
    return cfg, (f"note: this run's configuration predates per-algorithm config sections; dropped the {len(dropped)} "
                 f"algo keys {name} never used ({', '.join(dropped)})")


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
    if section == "algo":
        cfg.algo = algo_section(cfg.algo, {key: value}, path)
        return
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


def kept_config_name(step: int) -> str:
    """Where a resume at ``step`` that changes settings keeps the run's config.yaml before it:
    the settings the steps up to there were trained with (``KEPT_CONFIGS`` finds them all)."""
    return f"config.until_step_{step}.yaml"


KEPT_CONFIGS = "config.until_step_*.yaml"


def dump_yaml(cfg: Config) -> str:
    """The resolved configuration as YAML, itself a valid recipe for ``--config``."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """``data`` at ``path`` whole or not at all: a crash mid-write keeps the previous file
    (written beside it, synced, renamed over it, the rename synced). OS errors keep their errno."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def save_yaml(cfg: Config, path: str | os.PathLike) -> None:
    """Atomically: ``--resume`` reads it."""
    write_atomically(path, dump_yaml(cfg).encode())


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every field: the source of the CLI's config reference."""
    rows = []
    instance = cls()
    for f in dataclasses.fields(cls):
        annotation = _hints(cls)[f.name]
        if annotation is AlgoConfig:
            rows += describe_algorithms(f"{prefix}{f.name}.")
        elif dataclasses.is_dataclass(annotation):
            rows += describe(annotation, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", getattr(instance, f.name), f.metadata.get("help", "")))
    return rows


def describe_algorithms(prefix: str = "algo.") -> list[tuple[str, Any, str]]:
    """Every registered algorithm's keys, once each, with the algorithms that have them."""
    owners: dict[str, list[str]] = {}
    rows: dict[str, tuple[Any, str]] = {}
    for name in registry.registered_names():
        section = registry.lookup(name).config_class
        for f in dataclasses.fields(section):
            owners.setdefault(f.name, []).append(name)
            rows.setdefault(f.name, (getattr(section(), f.name), f.metadata.get("help", "")))
    every = len(registry.registered_names())
    return [(f"{prefix}{key}", default, text if len(owners[key]) == every else f"[{', '.join(owners[key])}] {text}")
            for key, (default, text) in rows.items()]


__all__ = [
    "Config",
    "ConfigError",
    "build_config",
    "from_dict",
    "from_saved",
    "load_yaml",
    "save_yaml",
    "write_atomically",
    "set_override",
    "describe",
]
