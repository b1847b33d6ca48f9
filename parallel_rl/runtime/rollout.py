"""Collecting fixed-length rollouts from a vectorised env into arrays allocated once."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..envs import VecEnv

Policy = Callable[[np.ndarray], np.ndarray]


class RolloutCollector:
    """Steps ``env`` for ``horizon`` steps per call, writing into preallocated [T, N] arrays.

    The arrays are reused by the next call: consume (or copy) a rollout before collecting
    the next one.
    """

    def __init__(self, env: VecEnv, horizon: int):
        spec, n = env.spec, env.num_envs
        self.env = env
        self.horizon = horizon
        action_shape = () if spec.discrete else tuple(spec.action_space.shape)
        action_dtype = np.int64 if spec.discrete else np.float32
        self.arrays = {
            "obs": np.zeros((horizon, n, *spec.obs_shape), spec.obs_dtype),
            "actions": np.zeros((horizon, n, *action_shape), action_dtype),
            "rewards": np.zeros((horizon, n), np.float32),
            "terminated": np.zeros((horizon, n), bool),
            "truncated": np.zeros((horizon, n), bool),
            "autoreset": np.zeros((horizon, n), bool),
            "next_obs": np.zeros((n, *spec.obs_shape), spec.obs_dtype),
        }
        self.obs = env.reset()
        self.step_seconds = 0.0
        self.policy_seconds = 0.0

    def collect(self, policy: Policy) -> dict[str, np.ndarray]:
        a = self.arrays
        obs = self.obs
        for t in range(self.horizon):
            a["obs"][t] = obs
            start = time.perf_counter()
            actions = policy(obs)
            stepped = time.perf_counter()
            result = self.env.step(actions)
            self.step_seconds += time.perf_counter() - stepped
            self.policy_seconds += stepped - start
            a["actions"][t] = actions
            a["rewards"][t] = result.reward
            a["terminated"][t] = result.terminated
            a["truncated"][t] = result.truncated
            a["autoreset"][t] = result.autoreset
            obs = result.obs
        a["next_obs"][:] = obs
        self.obs = obs
        return a

    def pop_timings(self) -> tuple[float, float]:
        """(env step seconds, policy seconds) since the last call."""
        out = self.step_seconds, self.policy_seconds
        self.step_seconds = self.policy_seconds = 0.0
        return out
