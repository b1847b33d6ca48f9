"""Collecting fixed-length rollouts into preallocated [T, N] arrays.

The environments are split into groups (two by default): while one group steps in
EnvPool's threads, the Python thread runs inference for the other, so stepping and
inference overlap. With one group everything takes turns. The same collector runs
inline in synchronous mode and inside each actor process in asynchronous mode; only the
arrays it writes differ (its own, or a shared-memory slot).

The collector's own timers also say how close acting runs to the env library's speed.
Every ``PROBE_EVERY`` steps it infers for every group first and then steps them all at
once, timing the bare step of all its envs (the actions, and so the trajectory, are the
same as without the probe; only that one step's overlap is given up). The run's env
efficiency is the wall-clock the steps taken would need at that speed, over the
wall-clock they took (learning, waiting for slots or weights included): 1.0 when acting
is as fast as the env library on these threads. Time blocked in ``recv`` would not do:
a group whose step ends while the other group's inference runs never blocks, so on
Pong's default layout that count read 0.08 where training ran at 0.22 of raw stepping.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .. import acting_noise
from ..contracts import Policy as ActingPolicy
from ..envs import EnvSpec, VecEnv

# (obs of the envs in columns ``envs``, envs) -> (actions, log-probability of each action under the
# acting policy, state value of each observation from the same pass: NaN where the policy has none)
Policy = Callable[[np.ndarray, slice], tuple[np.ndarray, np.ndarray, np.ndarray]]


def rollout_arrays(spec: EnvSpec, horizon: int, num_envs: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in one rollout of ``horizon`` steps from ``num_envs`` envs."""
    action_shape = () if spec.discrete else tuple(spec.action_space.shape)
    action_dtype = np.dtype(np.int64) if spec.discrete else np.dtype(np.float32)
    return {
        "obs": ((horizon, num_envs, *spec.obs_shape), spec.obs_dtype),
        "actions": ((horizon, num_envs, *action_shape), action_dtype),
        "behaviour_log_probs": ((horizon, num_envs), np.dtype(np.float32)),
        "behaviour_values": ((horizon, num_envs), np.dtype(np.float32)),
        "rewards": ((horizon, num_envs), np.dtype(np.float32)),
        "terminated": ((horizon, num_envs), np.dtype(bool)),
        "truncated": ((horizon, num_envs), np.dtype(bool)),
        "autoreset": ((horizon, num_envs), np.dtype(bool)),
        "next_obs": ((num_envs, *spec.obs_shape), spec.obs_dtype),
    }


PROBE_EVERY = 32  # steps between two timings of the bare env step
# the step time in use is the fastest of the latest probes: the others were slowed by
# whatever else ran (torch's OpenMP threads spin on the cores for a while after inference)
PROBES_KEPT = 16


def env_columns(sizes: list[int]) -> list[slice]:
    """Consecutive column ranges of groups of ``sizes`` envs, in order."""
    bounds = np.cumsum([0, *sizes])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@dataclass(frozen=True)
class CollectorTimings:
    step_s: float  # blocked waiting for env steps, beyond what inference hid
    inference_s: float
    wall_s: float  # the wall-clock the others are out of
    env_busy_s: float  # the steps taken, at the env library's own speed (the probes')


class RolloutCollector:
    """Steps groups of envs ``horizon`` steps per call, writing into caller-given arrays."""

    def __init__(self, groups: list[VecEnv], horizon: int):
        self.groups = groups
        self.horizon = horizon
        self.columns = env_columns([g.num_envs for g in groups])
        self.num_envs = self.columns[-1].stop
        self.obs = [g.reset() for g in groups]
        self.step_seconds = 0.0  # waiting for EnvPool beyond what inference hid
        self.policy_seconds = 0.0
        self.window_began: float | None = None  # the wall-clock the timings are out of starts at the first collect
        self.steps_taken = 0  # steps of all envs, over every collect
        self.window_steps = 0
        self.probes: collections.deque[float] = collections.deque(maxlen=PROBES_KEPT)  # seconds of one bare step

    def _receive(self, g: int, t: int, out: dict[str, np.ndarray]) -> None:
        result = self.groups[g].recv()
        cols = self.columns[g]
        out["rewards"][t, cols] = result.reward
        out["terminated"][t, cols] = result.terminated
        out["truncated"][t, cols] = result.truncated
        out["autoreset"][t, cols] = result.autoreset
        self.obs[g] = result.obs

    def collect(self, policy: Policy, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        groups, columns = self.groups, self.columns
        pending = [False] * len(groups)
        policy_s = wait_s = 0.0
        if self.window_began is None:
            self.window_began = time.perf_counter()
        for t in range(self.horizon + 1):
            probe = t < self.horizon and self.steps_taken % PROBE_EVERY == 0
            for g, (env, cols) in enumerate(zip(groups, columns, strict=True)):
                if pending[g]:
                    began = time.perf_counter()
                    self._receive(g, t - 1, out)
                    wait_s += time.perf_counter() - began
                    pending[g] = False
                if t == self.horizon:
                    out["next_obs"][cols] = self.obs[g]
                    continue
                out["obs"][t, cols] = self.obs[g]
                began = time.perf_counter()
                actions, log_probs, values = policy(self.obs[g], cols)
                policy_s += time.perf_counter() - began
                out["actions"][t, cols] = actions
                out["behaviour_log_probs"][t, cols] = log_probs
                out["behaviour_values"][t, cols] = values
                if not probe:
                    env.send(actions)
                    pending[g] = True
            if probe:  # every group at once, with nothing else running in this process
                began = time.perf_counter()
                for env, cols in zip(groups, columns, strict=True):
                    env.send(out["actions"][t, cols])
                for g in range(len(groups)):
                    self._receive(g, t, out)
                self.probes.append(time.perf_counter() - began)
                wait_s += self.probes[-1]
            if t < self.horizon:
                self.steps_taken += 1
                self.window_steps += 1
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

    def pop_timings(self) -> CollectorTimings:
        """The timers since the last call (or since the first collect)."""
        now = time.perf_counter()
        step_time = min(self.probes, default=0.0)
        out = CollectorTimings(self.step_seconds, self.policy_seconds, now - (self.window_began or now),
                               self.window_steps * step_time)
        self.step_seconds = self.policy_seconds = 0.0
        self.window_steps = 0
        self.window_began = now
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

    def __call__(self, obs: np.ndarray, envs: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # inference mode, not only no_grad: no version counters or view tracking on any tensor
        # of the pass; its outputs leave as numpy at once, so none reaches an autograd graph
        with torch.inference_mode(), self.streams.acting(envs):
            acted = self.policy.act_and_value(torch.from_numpy(obs).to(self.device, non_blocking=self.cuda))
        return tuple(tensor.cpu().numpy() for tensor in acted)
