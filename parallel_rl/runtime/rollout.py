"""Collecting fixed-length rollouts into preallocated [T, N] arrays.

The environments are split into groups (two by default): while one group steps in
EnvPool's threads, the Python thread runs inference for the other, so stepping and
inference overlap. With one group everything takes turns. The same collector runs
inline in synchronous mode and inside each actor process in asynchronous mode; only the
arrays it writes differ (its own, or a shared-memory slot).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from .. import acting_noise
from ..contracts import Policy as ActingPolicy
from ..envs import EnvSpec, VecEnv

# (obs of the envs in columns ``envs``, envs) -> (actions, log-probability of each action under the acting policy)
Policy = Callable[[np.ndarray, slice], tuple[np.ndarray, np.ndarray]]


def rollout_arrays(spec: EnvSpec, horizon: int, num_envs: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in one rollout of ``horizon`` steps from ``num_envs`` envs."""
    action_shape = () if spec.discrete else tuple(spec.action_space.shape)
    action_dtype = np.dtype(np.int64) if spec.discrete else np.dtype(np.float32)
    return {
        "obs": ((horizon, num_envs, *spec.obs_shape), spec.obs_dtype),
        "actions": ((horizon, num_envs, *action_shape), action_dtype),
        "behaviour_log_probs": ((horizon, num_envs), np.dtype(np.float32)),
        "rewards": ((horizon, num_envs), np.dtype(np.float32)),
        "terminated": ((horizon, num_envs), np.dtype(bool)),
        "truncated": ((horizon, num_envs), np.dtype(bool)),
        "autoreset": ((horizon, num_envs), np.dtype(bool)),
        "next_obs": ((num_envs, *spec.obs_shape), spec.obs_dtype),
    }


class RolloutCollector:
    """Steps groups of envs ``horizon`` steps per call, writing into caller-given arrays."""

    def __init__(self, groups: list[VecEnv], horizon: int):
        self.groups = groups
        self.horizon = horizon
        bounds = np.cumsum([0] + [g.num_envs for g in groups])
        self.columns = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self.num_envs = int(bounds[-1])
        self.obs = [g.reset() for g in groups]
        self.step_seconds = 0.0  # waiting for EnvPool beyond what inference hid
        self.policy_seconds = 0.0

    def collect(self, policy: Policy, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        groups, columns = self.groups, self.columns
        pending = [False] * len(groups)
        policy_s = wait_s = 0.0
        for t in range(self.horizon + 1):
            for g, (env, cols) in enumerate(zip(groups, columns, strict=True)):
                if pending[g]:
                    began = time.perf_counter()
                    result = env.recv()
                    wait_s += time.perf_counter() - began
                    out["rewards"][t - 1, cols] = result.reward
                    out["terminated"][t - 1, cols] = result.terminated
                    out["truncated"][t - 1, cols] = result.truncated
                    out["autoreset"][t - 1, cols] = result.autoreset
                    self.obs[g] = result.obs
                    pending[g] = False
                if t == self.horizon:
                    out["next_obs"][cols] = self.obs[g]
                    continue
                out["obs"][t, cols] = self.obs[g]
                began = time.perf_counter()
                actions, log_probs = policy(self.obs[g], cols)
                policy_s += time.perf_counter() - began
                env.send(actions)
                pending[g] = True
                out["actions"][t, cols] = actions
                out["behaviour_log_probs"][t, cols] = log_probs
        self.policy_seconds += policy_s
        self.step_seconds += wait_s
        return out

    def pop_episodes(self) -> tuple[list[float], list[int]]:
        returns: list[float] = []
        lengths: list[int] = []
        for env in self.groups:
            r, n = env.tracker.pop()
            returns += r
            lengths += n
        return returns, lengths

    def pop_timings(self) -> tuple[float, float]:
        """(seconds waiting for env steps, seconds of inference) since the last call."""
        out = self.step_seconds, self.policy_seconds
        self.step_seconds = self.policy_seconds = 0.0
        return out

    def close(self) -> None:
        for env in self.groups:
            env.close()


def allocate(spec: EnvSpec, horizon: int, num_envs: int) -> dict[str, np.ndarray]:
    return {name: np.zeros(shape, dtype) for name, (shape, dtype) in rollout_arrays(spec, horizon, num_envs).items()}


class NetworkPolicy:
    """A ``contracts.Policy``'s ``act`` as a rollout :data:`Policy`: the collector's env i,
    whose environment has seed ``first_env_seed + i``, draws its actions from that seed's
    stream (``acting_noise``), never from torch's generator, so acting is the same whichever
    process or rank steps the env, and however many random numbers an update draws.
    """

    def __init__(self, policy: ActingPolicy, device: torch.device, first_env_seed: int, num_envs: int):
        self.policy, self.device = policy, device
        self.cuda = device.type == "cuda"
        self.streams = acting_noise.EnvStreams(torch.arange(num_envs, device=device) + first_env_seed)

    def __call__(self, obs: np.ndarray, envs: slice) -> tuple[np.ndarray, np.ndarray]:
        with self.streams.acting(envs):
            actions, log_probs = self.policy.act(torch.from_numpy(obs).to(self.device, non_blocking=self.cuda))
        return actions.cpu().numpy(), log_probs.cpu().numpy()
