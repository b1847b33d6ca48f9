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
import os
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
    episodic_life: bool = _help("Atari: end an episode at every life lost (reported returns still span whole games).", False)
    fire_reset: bool = _help("Atari: press FIRE after reset in games that need it.", True)


@dataclass
class ActorsConfig:
    num_envs: int = _help("Number of environments stepped in parallel (PAAC's n_e); `--actors` sets it.", 32)
    num_threads: int = _help("EnvPool worker threads; 0 sizes them from the cores left after the learner.", 0)
    device: str = _help("Device for the actors' policy inference: auto, cpu, cuda, cuda:N.", "auto")
    procs: int = _help("Actor processes (K) sharing the environments; 0 runs the actor loop inline (synchronous, exact); -1 picks K from the core count.", -1)
    env_groups: int = _help("Groups of envs per actor stepped alternately, so inference for one overlaps stepping of the other.", 2)
    slots_per_actor: int = _help("Shared-memory rollout slots per actor process (2 = double buffering).", 2)
    max_policy_lag: int = _help("Asynchronous mode: rollouts acted by a policy more than this many updates old are dropped (and counted).", 4)
    deterministic_lag: bool = _help("Asynchronous mode: actors act with exactly the previous policy version, making seeded runs reproducible.", False)
    heartbeat_timeout_s: float = _help("An actor silent for this long is reported as stalled.", 3.0)
    restart_actors: bool = _help("Restart a dead or stalled actor instead of stopping the run.", False)


@dataclass
class ModelConfig:
    encoder: Literal["auto", "mlp", "nips_cnn", "nature_cnn"] = _help("Observation encoder; `auto` picks nature_cnn for images and mlp for vectors.", "auto")
    width: int = _help("Units per hidden layer of the MLP torso (after the CNN for images).", 256)
    depth: int = _help("Hidden layers of the MLP torso.", 1)
    layer_norm: bool = _help("LayerNorm after every hidden layer (over C,H,W after convolutions).", True)


@dataclass
class AlgoConfig:
    name: Literal["paac", "impala"] = _help("Algorithm: paac (n-step advantage actor-critic) or impala (V-trace off-policy correction).", "paac")
    rollout_length: int = _help("Agent steps per environment between updates (PAAC's t_max).", 5)
    gamma: float = _help("Discount factor.", 0.99)
    entropy_coef: float = _help("Weight of the entropy bonus (beta).", 0.02)
    value_coef: float = _help("Weight of the squared n-step value error.", 0.25)
    loss_scale: float = _help("Multiplies the whole loss; PAAC's code uses 5, the LR having been tuned for a sum over t_max = 5.", 1.0)
    max_grad_norm: float = _help("Global gradient-norm clip; 0 disables it.", 3.0)
    reward_clip: float = _help("Clip rewards to [-c, c] for learning (returns are logged unclipped); 0 disables it.", 0.0)
    rho_bar: float = _help("IMPALA: clip of the importance weights in the V-trace targets and policy gradient.", 1.0)
    c_bar: float = _help("IMPALA: clip of the trace-cutting coefficients in V-trace.", 1.0)


@dataclass
class OptimConfig:
    name: Literal["rmsprop", "adam"] = _help("Optimizer (torch.optim).", "rmsprop")
    lr: float = _help("Learning rate (per environment when lr_per_env is set).", 0.0007)
    lr_per_env: bool = _help("Multiply lr by actors.num_envs (PAAC's rule: 0.0007 x n_e).", True)
    anneal_lr: bool = _help("Decay the learning rate linearly to 0 over total_steps.", True)
    alpha: float = _help("RMSProp smoothing constant.", 0.99)
    eps: float = _help("Optimizer epsilon (RMSProp 0.1 in PAAC).", 0.1)


@dataclass
class LoggingConfig:
    run_root: str = _help("Folder under which run directories are created.", "runs")
    interval_s: float = _help("Seconds between TensorBoard scalar writes and console refreshes.", 5.0)
    return_window: int = _help("Completed episodes averaged for the console's and checkpoint's recent return.", 20)
    console: bool = _help("Print a progress line with steps, SPS, recent return and ETA.", True)


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
    env: EnvConfig = _help("Environment.", factory=EnvConfig)
    actors: ActorsConfig = _help("Actors (environments) and where they run.", factory=ActorsConfig)
    model: ModelConfig = _help("Network.", factory=ModelConfig)
    algo: AlgoConfig = _help("Algorithm.", factory=AlgoConfig)
    optim: OptimConfig = _help("Optimizer.", factory=OptimConfig)
    logging: LoggingConfig = _help("Logging and monitoring.", factory=LoggingConfig)
    checkpoint: CheckpointConfig = _help("Checkpoints.", factory=CheckpointConfig)

    # ------------------------------------------------------------------ derived values
    @property
    def effective_lr(self) -> float:
        return self.optim.lr * (self.actors.num_envs if self.optim.lr_per_env else 1)

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
        non_negative = {
            "actors.max_policy_lag": self.actors.max_policy_lag,
            "model.depth": self.model.depth,
            "env.max_episode_steps": self.env.max_episode_steps,
            "env.noop_max": self.env.noop_max,
            "actors.num_threads": self.actors.num_threads,
            "torch_threads": self.torch_threads,
            "checkpoint.interval_steps": self.checkpoint.interval_steps,
            "algo.max_grad_norm": self.algo.max_grad_norm,
            "algo.reward_clip": self.algo.reward_clip,
            "algo.entropy_coef": self.algo.entropy_coef,
            "algo.value_coef": self.algo.value_coef,
            "logging.interval_s": self.logging.interval_s,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name} = {value} is invalid: it must be 0 or more.")
        if not 0.0 <= self.algo.gamma <= 1.0:
            raise ConfigError(f"algo.gamma = {self.algo.gamma} is invalid: a discount lies in [0, 1].")
        if not 0.0 <= self.env.sticky_action_prob < 1.0:
            raise ConfigError(f"env.sticky_action_prob = {self.env.sticky_action_prob} is invalid: a probability in [0, 1).")
        if self.optim.lr <= 0 or self.effective_lr <= 0:
            raise ConfigError(f"optim.lr = {self.optim.lr} is invalid: the learning rate must be positive.")
        if self.algo.loss_scale <= 0:
            raise ConfigError(f"algo.loss_scale = {self.algo.loss_scale} is invalid: it must be positive.")
        batch = self.actors.num_envs * self.algo.rollout_length
        if self.total_steps < batch:
            raise ConfigError(
                f"total_steps = {self.total_steps} is smaller than one update's batch: actors.num_envs "
                f"({self.actors.num_envs}) x algo.rollout_length ({self.algo.rollout_length}) = {batch} agent steps. "
                f"Raise --steps to at least {batch} or use fewer actors."
            )
        for name in ("device", "actors.device"):
            check_device(name, self.device if name == "device" else self.actors.device)
        return self


def check_device(name: str, value: str) -> None:
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
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
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"Cannot read configuration file {str(path)!r}: {exc.strerror}.") from None
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


def save_yaml(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


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
