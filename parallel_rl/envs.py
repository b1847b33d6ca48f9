"""One factory for vectorised environments: EnvPool, ALE's own vector env for Atari
(``env.backend: ale``), and gymnasium's vector envs as the fallback.

Every backend auto-resets on the *next* step: the step after an episode ends ignores its
action and returns the first observation of the new episode with reward 0. That step is
not a real transition; ``StepResult.autoreset`` marks it so learners can mask it, and the
episode counters skip it. The upside of next-step auto-reset is that the observation
returned with ``terminated``/``truncated`` is the true final observation, so a truncated
episode can be bootstrapped from it.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import gymnasium as gym
import numpy as np

from .config import ConfigError, EnvConfig

# gymnasium notes that EnvPool's float64 bounds are cast to float32; harmless, and printed per process
warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")


@dataclass(frozen=True)
class EnvSpec:
    """What the networks and buffers need to know about an environment."""

    id: str
    backend: str
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    action_space: gym.Space  # continuous actions: always [-1, 1] (VecEnv maps them to the env's bounds)
    is_atari: bool
    max_episode_steps: int = 0  # the episode limit in agent steps; 0 when the env has none

    @property
    def is_image(self) -> bool:
        return len(self.obs_shape) == 3

    @property
    def discrete(self) -> bool:
        return isinstance(self.action_space, gym.spaces.Discrete)

    @property
    def num_actions(self) -> int:
        if not self.discrete:
            raise ConfigError(f"Environment {self.id!r} has continuous actions {self.action_space}; this algorithm needs a discrete action space.")
        return int(self.action_space.n)


@dataclass
class StepResult:
    obs: np.ndarray
    reward: np.ndarray  # float32, as the environment gave it (no clipping)
    terminated: np.ndarray  # bool
    truncated: np.ndarray  # bool
    autoreset: np.ndarray  # bool: this step only reset the env (not a transition)


class EpisodeTracker:
    """Vectorised per-env return and length counters that understand next-step auto-reset.

    A learning episode ends at every termination or truncation; a reported one (a whole
    game) only where ``game_over`` says so, when given: with Atari's episodic life, a life
    lost ends the learning episode while the score runs on to the end of the game.
    """

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)
        self.resets = np.zeros(num_envs, bool)  # the env's next step only resets it
        self.game_done = np.zeros(num_envs, bool)
        self.finished_returns: list[float] = []
        self.finished_lengths: list[int] = []

    def update(self, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
               game_over: np.ndarray | None = None, continuing: np.ndarray | None = None) -> np.ndarray:
        """Count one step; returns the auto-reset mask (steps that only reset an env).

        ``continuing`` marks terminations after which the env plays on without a reset step
        (ALE's life-loss signal: the next step is a real transition of the same game)."""
        autoreset = self.resets
        live = ~autoreset
        self.returns[self.game_done] = 0.0
        self.lengths[self.game_done] = 0
        self.returns += reward * live
        self.lengths += live
        done = (terminated | truncated) & live
        game_done = done if game_over is None else (game_over | truncated) & live
        if game_done.any():
            self.finished_returns.extend(self.returns[game_done].tolist())
            self.finished_lengths.extend(self.lengths[game_done].tolist())
        self.resets = done if continuing is None else done & ~continuing
        self.game_done = game_done
        return autoreset

    def end_games(self, ended: np.ndarray) -> None:
        """The games of ``ended`` are over after this step, though ``update`` read no ending
        in it (the step was a reset step to it): reported now, and the next step resets."""
        if ended.any():
            self.finished_returns.extend(self.returns[ended].tolist())
            self.finished_lengths.extend(self.lengths[ended].tolist())
            self.game_done = self.game_done | ended
            self.resets = self.resets | ended

    def pop(self) -> tuple[list[float], list[int]]:
        out = self.finished_returns, self.finished_lengths
        self.finished_returns, self.finished_lengths = [], []
        return out


class ObservationFlattener:
    """Batched observations of any gymnasium space as one array per env, as the networks take them.

    Images (a 3-d uint8 ``Box``) and vectors pass through; ``Discrete`` becomes a one-hot
    vector and ``Tuple``/``Dict`` the concatenation of their parts, each flattened (dict keys
    in sorted order) -- the layout of ``gymnasium.spaces.flatten`` applied to every env.
    """

    def __init__(self, space: gym.Space, env_id: str):
        self.space = space
        self.shape, self.dtype = self._layout(space, env_id)

    @classmethod
    def _layout(cls, space: gym.Space, env_id: str) -> tuple[tuple[int, ...], np.dtype]:
        if isinstance(space, gym.spaces.Box):
            # uint8 images stay bytes (the encoders scale them); anything else the MLPs take as
            # float32: float64 vectors, and integer ones such as EnvPool's Blackjack-v1 counts
            image = np.dtype(space.dtype) == np.uint8 and len(space.shape) == 3
            return tuple(space.shape), np.dtype(np.uint8) if image else np.dtype(np.float32)
        if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary,
                              gym.spaces.Tuple, gym.spaces.Dict)):
            return (int(gym.spaces.flatdim(space)),), np.dtype(np.float32)
        raise ConfigError(f"Environment {env_id!r} has the observation space {space}, which no network here can take: "
                          "observations must be a Box (vectors or images), Discrete, MultiDiscrete, MultiBinary, or a "
                          "Tuple or Dict of those.")

    def __call__(self, obs) -> np.ndarray:
        if isinstance(self.space, gym.spaces.Box):
            obs = np.asarray(obs)
            return obs if obs.dtype == self.dtype else obs.astype(self.dtype)
        return self._flat(self.space, obs)

    @classmethod
    def _flat(cls, space: gym.Space, obs) -> np.ndarray:
        if isinstance(space, gym.spaces.Discrete):
            index = np.asarray(obs, np.int64).reshape(-1) - int(space.start)
            out = np.zeros((len(index), int(space.n)), np.float32)
            out[np.arange(len(index)), index] = 1.0
            return out
        if isinstance(space, gym.spaces.MultiDiscrete):
            values = np.asarray(obs, np.int64).reshape(len(obs), -1) - np.asarray(space.start, np.int64).reshape(-1)
            parts = [np.eye(int(n), dtype=np.float32)[values[:, i]] for i, n in enumerate(space.nvec.reshape(-1))]
            return np.concatenate(parts, axis=1)
        if isinstance(space, gym.spaces.Tuple):
            return np.concatenate([cls._flat(s, o) for s, o in zip(space.spaces, obs, strict=True)], axis=1)
        if isinstance(space, gym.spaces.Dict):
            return np.concatenate([cls._flat(space.spaces[k], obs[k]) for k in sorted(space.spaces)], axis=1)
        obs = np.asarray(obs, np.float32)
        return obs.reshape(len(obs), -1)


class AleAsEnvPool:
    """What the ALE backend adds so that its games play and look as EnvPool's.

    - **Stacks at a game's start.** ALE fills the older slots of a new game's stack with
      zeros; EnvPool repeats the first frame, the form the frame replay's stack rule reads
      (``replay/frames.py``). The zeros are replaced by the first frame.
    - **FIRE after a life lost** (``episodic_life`` with ``fire_reset``). EnvPool ends the
      learning episode and spends the next step resetting it, pressing FIRE; ALE plays on,
      and in Breakout the ball waits until the agent serves. The step after a life lost is
      FIRE in place of the agent's action, a reset step as EnvPool's (``autoreset``: no
      transition, not counted in the game's return or length). EnvPool's random no-ops
      before that FIRE are not played.
    - **A life lost on the step that reaches the episode limit** comes as terminated, not
      truncated, though ALE resets the game next step: it ends the game.
    """

    def __init__(self, num_envs: int, episode_steps: int, frame_stack: int, episodic_life: bool, fire_action: int | None):
        self.episode_steps, self.frame_stack = episode_steps, frame_stack
        self.episodic_life, self.fire_action = episodic_life, fire_action
        self.lives = np.zeros(num_envs, np.int64)  # after the last step: a life lost from a game over
        self.steps_in_game = np.zeros(num_envs, np.int64)  # ALE's limit counts them, reset steps aside
        self.frames_in_game = np.zeros(num_envs, np.int64)  # frames the stack has taken since the game began
        self.fire_next = np.zeros(num_envs, bool)
        self.firing = np.zeros(num_envs, bool)  # the step under way presses FIRE in place of the agent's action

    def started(self, obs: np.ndarray, lives: np.ndarray) -> np.ndarray:
        self.lives = lives
        self.steps_in_game[:] = self.frames_in_game[:] = 0
        self.fire_next[:] = self.firing[:] = False
        return self._first_frame_repeated(obs)

    def actions(self, actions: np.ndarray) -> np.ndarray:
        self.firing = self.fire_next
        if self.firing.any():
            actions = actions.copy()
            actions[self.firing] = self.fire_action
        return actions

    def received(self, obs: np.ndarray, terminated: np.ndarray, lives: np.ndarray,
                 tracker: EpisodeTracker) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(obs, game_over, continuing) of a step, for ``EpisodeTracker.update``; before it."""
        new_game = tracker.resets & ~self.firing  # this step reset the game
        self.steps_in_game = np.where(new_game, 0, self.steps_in_game + 1)
        self.frames_in_game = np.where(new_game, 0, self.frames_in_game + 1)
        game_over = continuing = None
        if self.episodic_life:
            at_limit = self.steps_in_game >= self.episode_steps
            life_lost = terminated & (lives > 0) & (lives < self.lives) & ~at_limit
            game_over = terminated & ~life_lost
            if self.fire_action is None:
                continuing = life_lost  # the next step is a real transition of the same game
            else:
                continuing = np.zeros_like(life_lost)  # the next step presses FIRE: a reset step
                self.fire_next = life_lost
        self.lives = lives
        return self._first_frame_repeated(obs), game_over, continuing

    def updated(self, tracker: EpisodeTracker, game_over: np.ndarray | None, truncated: np.ndarray) -> None:
        """After ``EpisodeTracker.update``: a FIRE step is a reset step to the tracker, which
        reads no ending in it; a game that ended on one is reported here, and a life lost on
        one makes the next FIRE a reset step too."""
        if game_over is None or not self.firing.any():
            return
        tracker.end_games(self.firing & (game_over | truncated))
        tracker.resets |= self.fire_next

    def _first_frame_repeated(self, obs: np.ndarray) -> np.ndarray:
        for i in np.flatnonzero(self.frames_in_game < self.frame_stack - 1):
            first = self.frame_stack - 1 - self.frames_in_game[i]
            obs[i, :first] = obs[i, first]
        return obs


class VecEnv:
    """``num_envs`` environments stepped together; numpy in, numpy out."""

    def __init__(self, env, spec: EnvSpec, num_envs: int, flatten: ObservationFlattener,
                 action_bounds: tuple[np.ndarray, np.ndarray] | None = None, episodic_life: bool = False,
                 action_repeat: int = 1, ale_fire_action: int | None = None):
        self._env = env
        self._action_repeat = action_repeat  # EnvPool's tasks: repeated here; gymnasium's: by RepeatAction per env
        self._sent: np.ndarray | None = None
        self._episodic_life = episodic_life  # EnvPool terminates at each life lost; info["terminated"] marks the game's end
        self._flatten = flatten
        self.spec = spec
        self.num_envs = num_envs
        # continuous actions arrive in [-1, 1]: a -> center + half_range * a
        self._action_map = None if action_bounds is None else ((action_bounds[1] + action_bounds[0]) / 2, (action_bounds[1] - action_bounds[0]) / 2)
        self.tracker = EpisodeTracker(num_envs)
        self._action_dtype = np.int32 if spec.discrete else np.float32
        self._env_ids = np.arange(num_envs, dtype=np.int32)
        self._pending: np.ndarray | None = None
        self._ale = (AleAsEnvPool(num_envs, spec.max_episode_steps, spec.obs_shape[0], episodic_life, ale_fire_action)
                     if spec.backend == "ale" else None)

    @property
    def recv_releases_gil(self) -> bool:
        """Whether ``recv`` waits in C++ without the GIL (EnvPool, ALE), so another thread may
        wait on it; gymnasium's envs step in Python inside ``recv``."""
        return self.spec.backend in ("envpool", "ale")

    def reset(self) -> np.ndarray:
        obs, info = self._env.reset()
        self.tracker = EpisodeTracker(self.num_envs)
        if self._ale is not None:
            return self._ale.started(self._flatten(obs), np.asarray(info["lives"])[np.argsort(info["env_id"])])
        return self._flatten(obs)

    def step(self, actions: np.ndarray) -> StepResult:
        self.send(actions)
        return self.recv()

    def send(self, actions: np.ndarray) -> None:
        """Start stepping every env; with EnvPool this returns at once and the threads work
        while the caller does something else (e.g. inference for another group of envs)."""
        actions = np.asarray(actions, self._action_dtype)
        if self._action_map is not None:
            center, half_range = self._action_map
            actions = (center + half_range * np.clip(actions, -1.0, 1.0)).astype(np.float32)
        if self.spec.backend == "envpool":
            self._env.send(actions, self._env_ids)
            self._sent = actions
        elif self._ale is not None:
            self._env.send(self._ale.actions(actions))
        else:
            self._pending = actions

    def recv(self) -> StepResult:
        game_over = continuing = None
        if self.spec.backend in ("envpool", "ale"):
            obs, reward, terminated, truncated, info = self._env.recv()
            order = info["env_id"]
            if not np.array_equal(order, self._env_ids):  # completion order -> env order
                inverse = np.argsort(order)
                obs = {k: v[inverse] for k, v in obs.items()} if isinstance(obs, dict) else np.asarray(obs)[inverse]
                reward, terminated, truncated = reward[inverse], terminated[inverse], truncated[inverse]
                info = {k: np.asarray(v)[inverse] for k, v in info.items()}
            terminated = np.asarray(terminated, bool)
            if self.spec.backend == "envpool":
                game_over = np.asarray(info["terminated"], bool) if self._episodic_life else None
            obs = self._flatten(obs)
            if self._ale is not None:
                obs, game_over, continuing = self._ale.received(obs, terminated, np.asarray(info["lives"]), self.tracker)
        else:
            obs, reward, terminated, truncated, _ = self._env.step(self._pending)
            obs = self._flatten(obs)
        terminated = np.asarray(terminated, bool)
        truncated = np.asarray(truncated, bool)
        if self._action_repeat > 1 and self.spec.backend == "envpool":
            obs, reward, terminated, truncated = self._repeat(obs, reward, terminated, truncated)
        reward = np.asarray(reward, np.float32)
        autoreset = self.tracker.update(reward, terminated, truncated, game_over, continuing)
        if self._ale is not None:
            self._ale.updated(self.tracker, game_over, truncated)
        return StepResult(obs, reward, terminated, truncated, autoreset)

    def _repeat(self, obs: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
                truncated: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The rest of an action's repeats after its first step: only envs whose episode goes
        on step again (EnvPool steps a subset by id), and not those whose step was the reset
        (a reset takes no action, as ``reset()`` under the wrapper)."""
        obs, reward = obs.copy(), np.asarray(reward, np.float64).copy()
        terminated, truncated = terminated.copy(), truncated.copy()
        going_on = ~(terminated | truncated) & ~self.tracker.resets
        for _ in range(self._action_repeat - 1):
            ids = self._env_ids[going_on]
            if len(ids) == 0:
                break
            step_obs, step_reward, step_terminated, step_truncated, info = self._env.step(self._sent[ids], ids)
            rows = np.asarray(info["env_id"])  # env i is row i
            obs[rows] = self._flatten(step_obs)
            reward[rows] += step_reward
            terminated[rows] = step_terminated
            truncated[rows] = step_truncated
            going_on[rows] = ~(np.asarray(step_terminated, bool) | np.asarray(step_truncated, bool))
        return obs, reward, terminated, truncated

    def render(self, index: int = 0) -> np.ndarray:
        """RGB frame [H, W, 3] of env ``index`` as it is now; needs ``make_env(..., render=True)``."""
        if self.spec.backend == "envpool":
            return self._env.render(env_ids=[index])[0]
        if self.spec.backend == "ale":
            raise NotImplementedError("ALE's vector env draws no frames; its observations are the picture")
        return self._env.render()[index]

    def close(self) -> None:
        close = getattr(self._env, "close", None)
        if close is not None:
            close()


# ---------------------------------------------------------------------------- factory


# `import envpool` registers every family of tasks it has, and some of those registrations
# import heavy libraries (jumanji's renderer imports matplotlib): seconds of every run's
# start-up, and of every actor process's, for tasks the run never makes. EnvPool's package
# imports its families from `envpool.entry`; with that module stood in for, only the
# families a run asks about are registered, cheapest first, until its task is found.
ENVPOOL_FAMILIES_FIRST = ("classic_control", "toy_text", "atari", "mujoco.gym", "box2d", "mujoco.dmc")


@cache
def _envpool_families() -> tuple[str, ...] | None:
    """EnvPool's task families in the order to register them, with its package imported but
    none registered yet; None where EnvPool is not installed."""
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("envpool")
    if spec is None or not spec.submodule_search_locations:
        return None
    entry = Path(next(iter(spec.submodule_search_locations))) / "entry.py"
    listed = re.findall(r"^import envpool\.([\w.]+)\.registration", entry.read_text(), re.M) if entry.exists() else []
    if "envpool" not in sys.modules and listed:
        sys.modules["envpool.entry"] = types.ModuleType("envpool.entry")
    try:
        import envpool  # noqa: F401
    except ImportError:
        return None
    return tuple(sorted(listed, key=lambda f: ENVPOOL_FAMILIES_FIRST.index(f) if f in ENVPOOL_FAMILIES_FIRST else len(ENVPOOL_FAMILIES_FIRST)))


def is_envpool_task(env_id: str) -> bool:
    """Whether EnvPool has ``env_id``, registering its families one by one until it is found."""
    import importlib

    families = _envpool_families()
    if families is None:
        return False
    import envpool

    for family in families:
        if env_id in envpool.list_all_envs():
            return True
        importlib.import_module(f"envpool.{family}.registration")
    return env_id in envpool.list_all_envs()


@cache
def envpool_ids() -> tuple[str, ...]:
    """EnvPool's task ids, every family registered; none where EnvPool is not installed."""
    is_envpool_task("")  # registers them all
    if _envpool_families() is None:
        return ()
    import envpool

    return tuple(envpool.list_all_envs())


@cache
def ale_games() -> dict[str, str]:
    """Atari ids as EnvPool names them (``Pong-v5``) -> ALE's ROM name (``pong``); none
    where ale-py is not installed."""
    try:
        from ale_py import roms
    except ImportError:
        return {}
    return {"".join(part.capitalize() for part in rom.split("_")) + "-v5": rom for rom in roms.get_all_rom_ids()}


def gymnasium_ids() -> tuple[str, ...]:
    """gymnasium's registered ids but its own Atari entries (ALE/Pong-v5, Pong-v4,
    PongNoFrameskip-v4): raw frames, which the EnvPool and ALE backends run preprocessed as Pong-v5."""
    return tuple(env_id for env_id, spec in gym.registry.items() if not str(spec.entry_point).startswith("ale_py"))


def preprocessed_atari_id(env_id: str) -> str | None:
    """The id (``Pong-v5``) under which the backends here run the game of gymnasium's raw Atari
    entry ``env_id``, if it is one."""
    spec = gym.registry.get(env_id)
    if spec is None or not str(spec.entry_point).startswith("ale_py"):
        return None
    game = "".join(part.capitalize() for part in str(spec.kwargs.get("game", "")).split("_")) + "-v5"
    return game if is_envpool_task(game) or game in ale_games() else None


def all_env_ids() -> list[str]:
    return sorted(set(envpool_ids()) | set(ale_games()) | set(gymnasium_ids()))


def _unknown_env(env_id: str) -> ConfigError:
    ids = all_env_ids()
    close = difflib.get_close_matches(env_id, ids, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(
        f"Unknown environment {env_id!r}.{hint} It is neither an EnvPool task nor a registered gymnasium id; "
        f"`parallel-rl envs [FILTER]` lists the {len(ids)} valid ids (e.g. Pong-v5, Breakout-v5, CartPole-v1, HalfCheetah-v5)."
    )


# EnvPool tasks that ignore max_episode_steps (EnvPool 1.2.5's CliffWalking never truncates,
# so an evaluation of a policy that walks in circles would never end): `auto` takes
# gymnasium's version, whose time limit holds.
ENVPOOL_WITHOUT_EPISODE_LIMIT = frozenset({"CliffWalking-v1"})
ATARI_V5_EPISODE_STEPS = 27_000  # the v5 tasks' limit: 108,000 frames at frame skip 4 (EnvPool's default too)


def choose_backend(cfg: EnvConfig) -> str:
    """The library that steps ``cfg.id``: the one ``env.backend`` names, or for ``auto`` EnvPool,
    then ALE's vector env for Atari ids EnvPool cannot run, then gymnasium."""
    in_envpool = is_envpool_task(cfg.id) and not (cfg.backend == "auto" and cfg.id in ENVPOOL_WITHOUT_EPISODE_LIMIT
                                                  and cfg.id in gymnasium_ids())
    if cfg.backend == "envpool":
        if not in_envpool:
            raise _unknown_env(cfg.id) if cfg.id not in gymnasium_ids() and cfg.id not in ale_games() else ConfigError(
                f"env.backend = 'envpool' but {cfg.id!r} is not an EnvPool task{'' if envpool_ids() else ' (EnvPool is not installed)'}; "
                f"use env.backend=auto{', ale' if cfg.id in ale_games() else ''} or gymnasium."
            )
        return "envpool"
    if cfg.backend == "ale":
        if cfg.id not in ale_games():
            installed = "" if ale_games() else " ale-py is not installed: `pip install ale-py`."
            raise ConfigError(f"env.backend = 'ale' steps Atari games only, named as EnvPool names them (Pong-v5, Breakout-v5); "
                              f"{cfg.id!r} is not one.{installed} For other environments use env.backend=auto.")
        return "ale"
    if cfg.backend == "auto" and in_envpool:
        return "envpool"
    if cfg.backend == "auto" and cfg.id in ale_games():
        return "ale"
    if (game := preprocessed_atari_id(cfg.id)) is not None:
        raise ConfigError(f"{cfg.id!r} is gymnasium's raw Atari environment (210x160 colour frames, one at a time), which the "
                          f"networks here do not take: use --env {game}, the same game with Atari's preprocessing (frame skip, "
                          "84x84 grayscale, a stack of 4) through EnvPool or ALE's vector env.")
    if cfg.id in gymnasium_ids():
        return "gymnasium"
    if cfg.backend == "gymnasium" and (in_envpool or cfg.id in ale_games()):
        raise ConfigError(f"env.backend = 'gymnasium' but {cfg.id!r} is not a gymnasium id: it is "
                          f"{'an EnvPool task' if in_envpool else 'an Atari game of ALE'}; use env.backend=auto"
                          f"{', envpool' if in_envpool else ''}{', ale' if cfg.id in ale_games() else ''}.")
    raise _unknown_env(cfg.id)


def _ale_kwargs(cfg: EnvConfig) -> dict:
    """EnvPool's Atari preprocessing in ALE's terms (``_envpool_kwargs``), so either backend runs the same game."""
    return dict(
        frameskip=cfg.frame_skip,
        stack_num=cfg.frame_stack,
        img_height=cfg.image_size,
        img_width=cfg.image_size,
        grayscale=True,
        maxpool=True,
        # EnvPool plays 1 + U[0, noop_max - 1] - fire no-ops, then FIRE where fire_reset: 1 to
        # noop_max frames either way. ALE plays FIRE first, then U[0, n - 1] - fire no-ops, so at
        # n = noop_max + 1 it plays EnvPool's 1 to noop_max frames with FIRE; without FIRE 0 to
        # noop_max no-ops (it cannot be made to play at least one)
        noop_max=cfg.noop_max + 1,
        repeat_action_probability=cfg.sticky_action_prob,
        # ALE's own episodic_life resets the whole game at a life lost; its life-loss signal
        # ends the learning episode and plays on, as EnvPool's episodic_life does
        episodic_life=False,
        life_loss_info=cfg.episodic_life,
        use_fire_reset=cfg.fire_reset,
        reward_clipping=False,
        max_num_frames_per_episode=_ale_episode_steps(cfg) * cfg.frame_skip,
    )


def _ale_episode_steps(cfg: EnvConfig) -> int:
    return cfg.max_episode_steps or ATARI_V5_EPISODE_STEPS


def _envpool_kwargs(cfg: EnvConfig) -> tuple[dict, bool]:
    import envpool

    defaults = envpool.make_spec(cfg.id).config._asdict()
    is_atari = "frame_skip" in defaults and "stack_num" in defaults and "noop_max" in defaults
    kwargs: dict = {}
    if is_atari:
        # Set every preprocessing choice explicitly: EnvPool's own defaults are not PAAC's.
        kwargs.update(
            frame_skip=cfg.frame_skip,
            stack_num=cfg.frame_stack,
            img_height=cfg.image_size,
            img_width=cfg.image_size,
            gray_scale=True,
            noop_max=cfg.noop_max,
            repeat_action_probability=cfg.sticky_action_prob,
            episodic_life=cfg.episodic_life,
            use_fire_reset=cfg.fire_reset,
            reward_clip=False,
        )
    if cfg.max_episode_steps:
        kwargs["max_episode_steps"] = cfg.max_episode_steps * (1 if is_atari else cfg.action_repeat)
    return kwargs, is_atari


def default_num_threads(num_envs: int, reserved_cores: int = 0) -> int:
    cores = os.cpu_count() or 1
    return max(1, min(num_envs, cores - reserved_cores))


def _thread_ids() -> set[int]:
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:  # no /proc: not Linux
        return set()


@contextmanager
def threads_started() -> Iterator[set[int]]:
    """The ids of the threads this process started inside the block, filled in as it ends
    (empty where there is no ``/proc``)."""
    before = _thread_ids()
    started: set[int] = set()
    yield started
    started.update(_thread_ids() - before)


@contextmanager
def worker_threads_never_preempt_on_wakeup() -> Iterator[None]:
    """The threads started inside the block (an env library's workers) run under Linux's
    SCHED_BATCH policy.

    Otherwise a worker that ``send`` wakes may preempt the Python thread that woke it, on a
    core the worker would have had a moment later anyway, and the Python thread waits a
    scheduler slice before it acts for the other group: on 2 cores a send to 128 Pong envs
    on 2 threads took 0.44-0.45 ms at the mean and 2.4-2.5 ms at the 90th percentile, against
    0.12-0.14 and 0.16-0.21 under SCHED_BATCH (``benchmarks/send_wakeup.py``).
    SCHED_BATCH keeps the threads' share of the cores (the same nice value) and gives up only
    the preemption on wakeup; it needs no privilege. Where the policy cannot be set (not
    Linux, or refused), the threads keep the default one."""
    with threads_started() as started:
        yield
    set_policy = getattr(os, "sched_setscheduler", None)
    if set_policy is None:
        return
    for tid in started:
        try:
            set_policy(tid, os.SCHED_BATCH, os.sched_param(0))
        except OSError:  # the thread ended, or a sandbox refused: it keeps the default policy
            pass


def make_env(cfg: EnvConfig, num_envs: int, seed: int, num_threads: int = 0, render: bool = False) -> VecEnv:
    """Build ``num_envs`` copies of ``cfg.id``; raises ``ConfigError`` for an unknown id.

    ``render`` asks the backend for RGB frames (``VecEnv.render``), for videos.
    """
    backend = choose_backend(cfg)
    fire_action = None  # ALE: FIRE after a life lost (AleAsEnvPool)
    if backend == "envpool":
        import envpool

        kwargs, is_atari = _envpool_kwargs(cfg)
        if is_atari and cfg.action_repeat > 1:
            raise _atari_action_repeat(cfg)
        if render:
            kwargs["render_mode"] = "rgb_array"
        with worker_threads_never_preempt_on_wakeup():
            env = envpool.make(
                cfg.id,
                env_type="gymnasium",
                num_envs=num_envs,
                seed=seed,
                num_threads=num_threads or default_num_threads(num_envs),
                **kwargs,
            )
    elif backend == "ale":
        from ale_py.vector_env import AtariVectorEnv

        if cfg.action_repeat > 1:
            raise _atari_action_repeat(cfg)
        is_atari = True  # ``render`` needs nothing: videos film the observations (VecEnv.render)
        with worker_threads_never_preempt_on_wakeup():
            env = AtariVectorEnv(ale_games()[cfg.id], num_envs, num_threads=num_threads or default_num_threads(num_envs),
                                 **_ale_kwargs(cfg))
        env.reset(seed=seed)  # env i is seeded with seed + i, as EnvPool seeds its envs
        if cfg.episodic_life and cfg.fire_reset:
            fire_action = _fire_action(ale_games()[cfg.id])
    else:
        is_atari = False
        make_kwargs = {"max_episode_steps": cfg.max_episode_steps * cfg.action_repeat} if cfg.max_episode_steps else {}
        if render:
            make_kwargs["render_mode"] = "rgb_array"
        if cfg.action_repeat > 1:
            make_kwargs["wrappers"] = [partial(RepeatAction, times=cfg.action_repeat)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gymnasium's float64 -> float32 precision notes
            env = gym.make_vec(
                cfg.id,
                num_envs=num_envs,
                vectorization_mode="sync",
                vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP},
                **make_kwargs,
            )
        env.reset(seed=seed)  # seeds the envs' RNGs; later unseeded resets continue from them
    obs_space = getattr(env, "single_observation_space", None) or env.observation_space
    act_space = getattr(env, "single_action_space", None) or env.action_space
    try:
        flatten = ObservationFlattener(obs_space, cfg.id)
    except ConfigError:
        env.close()
        raise
    act_space, action_bounds = _unit_action_space(act_space)
    spec = EnvSpec(cfg.id, backend, flatten.shape, flatten.dtype, act_space, is_atari, _episode_limit(env, cfg, backend, is_atari))
    return VecEnv(env, spec, num_envs, flatten, action_bounds, episodic_life=is_atari and cfg.episodic_life,
                  action_repeat=1 if is_atari else cfg.action_repeat, ale_fire_action=fire_action)


def _fire_action(game: str) -> int | None:
    """The index of FIRE in ``game``'s minimal action set (the agent's actions), None without it."""
    import ale_py

    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(ale_py.roms.get_rom_path(game))
    actions = list(ale.getMinimalActionSet())
    return actions.index(ale_py.Action.FIRE) if ale_py.Action.FIRE in actions else None


class RepeatAction(gym.Wrapper):
    """Each action ``times`` times, rewards summed, stopping where the episode ends (one env
    of the gymnasium backend; EnvPool's are repeated in ``VecEnv``)."""

    def __init__(self, env: gym.Env, times: int):
        super().__init__(env)
        self.times = times

    def step(self, action):
        total = 0.0
        for _ in range(self.times):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


def _atari_action_repeat(cfg: EnvConfig) -> ConfigError:
    return ConfigError(f"env.action_repeat = {cfg.action_repeat} is for non-Atari tasks; {cfg.id} repeats each action "
                       f"env.frame_skip = {cfg.frame_skip} times (max-pooling the last two frames): pass --set env.action_repeat=1, "
                       "and --set env.frame_skip=N for another repeat.")


def _unit_action_space(space: gym.Space) -> tuple[gym.Space, tuple[np.ndarray, np.ndarray] | None]:
    """Bounded continuous actions are exchanged in [-1, 1] whatever the env's bounds (the
    policies squash into [-1, 1]); returns that space and the env's (low, high) to map onto."""
    if not isinstance(space, gym.spaces.Box) or not (np.isfinite(space.low).all() and np.isfinite(space.high).all()):
        return space, None
    bounds = (space.low.astype(np.float32), space.high.astype(np.float32))
    unit = np.ones(space.shape, np.float32)
    return gym.spaces.Box(-unit, unit, dtype=np.float32), bounds


def _episode_limit(env, cfg: EnvConfig, backend: str, is_atari: bool) -> int:
    """The time limit in agent steps (decisions: the env's own limit over the action repeat)."""
    if cfg.max_episode_steps:
        return cfg.max_episode_steps
    if backend == "ale":
        return _ale_episode_steps(cfg)
    if backend == "envpool":
        env_steps = int(env.config.get("max_episode_steps", 0) or 0)
    else:
        env_steps = int(gym.spec(cfg.id).max_episode_steps or 0)
    return env_steps if is_atari else -(-env_steps // cfg.action_repeat)


def env_spec(cfg: EnvConfig) -> EnvSpec:
    """The spec of an environment without keeping it open."""
    env = make_env(cfg, num_envs=1, seed=0, num_threads=1)
    try:
        return env.spec
    finally:
        env.close()


def make_env_groups(cfg: EnvConfig, num_envs: int, seed: int, num_threads: int, groups: int) -> list[VecEnv]:
    """``num_envs`` envs split into ``groups`` independently stepped pools.

    Env i gets seed ``seed + i`` whatever the split, as one pool of ``num_envs`` would.
    """
    groups = max(1, min(groups, num_envs))
    sizes = [num_envs // groups + (g < num_envs % groups) for g in range(groups)]
    out, start = [], 0
    try:
        for size in sizes:
            out.append(make_env(cfg, size, seed + start, num_threads))
            start += size
    except BaseException:
        for env in out:
            env.close()
        raise
    return out
