"""Collecting fixed-length rollouts into preallocated [T, N] arrays.

The environments are split into groups (two by default): while one group steps in
EnvPool's threads, the Python thread runs inference for the other, so stepping and
inference overlap. Each group goes through the rollout's steps at its own pace. Where a
step takes long enough (``ORDER_FREE_MIN_STEP_S``), the collector takes whichever group's
step ends first (:class:`StepArrivals`), so within a rollout no group waits for another's;
else it takes them in the order they were sent. With one group everything takes turns.
Where the weights acting now may also act in the next rollout (an actor process whose
algorithm allows some lag) and the groups are taken as their steps end, the caller hands
over the next rollout's arrays too, and a group that finishes the rollout goes on into them
rather than waiting for the last group.
The same collector runs inline in synchronous mode and inside each actor process in
asynchronous mode; only the arrays it writes differ (its own, or a shared-memory slot).

The collector's own timers also say how close acting runs to the env library's speed.
Every ``PROBE_EVERY`` steps it waits until every group has reached that step, infers for
every group and then steps them all at once, timing the bare step of all its envs (the
actions, and so the trajectory, are the same as without the probe; only that step's
overlap is given up). The run's env efficiency is the wall-clock the steps taken would
need at that speed, over the wall-clock they took (learning, waiting for slots or weights
included): 1.0 when acting is as fast as the env library on these threads. Time blocked
in ``recv`` would not do: a group whose step ends while the other group's inference runs
never blocks, so on Pong's default layout that count read 0.08 where training ran at
0.22 of raw stepping.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .. import acting_noise
from ..contracts import Policy as ActingPolicy
from ..envs import EnvSpec, StepResult, VecEnv

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


PROBE_EVERY = 32  # steps between two timings of the bare env step (counted over rollouts)
# the step time in use is the fastest of the latest probes: the others were slowed by
# whatever else ran (torch's OpenMP threads spin on the cores for a while after inference)
PROBES_KEPT = 16
# Groups are taken as their steps end only where a bare step is at least this long: handing
# each step between threads costs about 0.1 ms a group step, which cut EnvPool CartPole's
# transport from 0.21 to 0.16 of raw stepping (0.59 ms a step) and is lost in Pong's 44 ms
ORDER_FREE_MIN_STEP_S = 0.005


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


class StepArrivals:
    """Each group's blocking ``recv`` in a thread of its own, so that the collector takes the
    groups in the order their steps end, not the order they were sent.

    In a fixed order a group whose step ends first waits, its env threads idle, while the
    Python thread is still blocked on the other group's ``recv``. Taken as they end, Pong's
    transport measured a median 2-4% faster on two cores in each of four side-by-side runs,
    within that machine's noise (docs/benchmarks.md, "Groups taken as their steps end").
    The threads only wait: EnvPool's and ALE's ``recv`` release the GIL until the step is
    done.
    """

    def __init__(self, groups: list[VecEnv]):
        self.groups = groups
        self.ended: queue.SimpleQueue[tuple[int, StepResult | BaseException]] = queue.SimpleQueue()
        self.requests: list[queue.SimpleQueue[bool]] = [queue.SimpleQueue() for _ in groups]
        self.pending = 0
        self.threads = [threading.Thread(target=self._receive_each_step, args=(g,), name=f"recv-group-{g}", daemon=True)
                        for g in range(len(groups))]
        for thread in self.threads:
            thread.start()

    def _receive_each_step(self, g: int) -> None:
        while (request := self.requests[g].get()) is not None:
            try:
                destination, index, observation = request
                destination[index] = observation
                ended = self.groups[g].recv()
            except BaseException as error:  # handed to the collector's thread, raised there
                ended = error
            self.ended.put((g, ended))

    def expect(self, g: int, destination: np.ndarray, index: tuple, observation: np.ndarray) -> None:
        """Group ``g`` was sent a step: write the observation it acted on into
        ``destination[index]``, then receive the step.

        The copy (megabytes of frames a group step on Atari) is made here rather than in the
        collector's thread, where it would hold up acting for a group whose step has ended;
        numpy lets the other threads run while it copies."""
        self.pending += 1
        self.requests[g].put((destination, index, observation))

    def next(self, timeout_s: float | None = None) -> tuple[int, StepResult]:
        g, ended = self.ended.get(timeout=timeout_s)
        self.pending -= 1
        if isinstance(ended, BaseException):
            raise ended
        return g, ended

    def close(self, timeout_s: float = 10.0) -> set[int]:
        """Receives the steps still under way (a collect that raised leaves some), so that no
        thread is inside ``recv`` when the envs close, then ends the threads. Returns the
        groups whose thread is still inside ``recv`` after ``timeout_s``."""
        while self.pending:
            try:
                self.next(timeout_s)
            except queue.Empty:
                break
            except Exception:  # a failed step: closing after a failure, which is the caller's to report
                continue
        for request in self.requests:
            request.put(None)
        for thread in self.threads:
            thread.join(timeout_s)
        return {g for g, thread in enumerate(self.threads) if thread.is_alive()}


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
        self.sent: collections.deque[int] = collections.deque()  # groups stepping, in the order sent
        self.arrivals = StepArrivals(groups) if len(groups) > 1 and all(g.recv_releases_gil for g in groups) else None
        self.order_free = False  # the groups are taken as their steps end (through ``arrivals``)
        # each group's rows of the rollout under way: acted on (its step sent) and received;
        # past the horizon where it ran ahead into the next rollout's arrays
        self.acted = [0] * len(groups)
        self.received = [0] * len(groups)
        self.at_probe: set[int] = set()  # groups waiting at a probe step for the others
        self.running_ahead_into: dict[str, np.ndarray] | None = None

    def takes_groups_as_their_steps_end(self) -> bool:
        """Whether the next collect takes the groups as their steps end (long steps, several
        groups whose ``recv`` frees the GIL), rather than in the order they were sent."""
        return self.arrivals is not None and min(self.probes, default=0.0) >= ORDER_FREE_MIN_STEP_S

    def _receive(self, g: int, out: dict[str, np.ndarray], t: int, result: StepResult) -> None:
        cols = self.columns[g]
        out["rewards"][t, cols] = result.reward
        out["terminated"][t, cols] = result.terminated
        out["truncated"][t, cols] = result.truncated
        out["autoreset"][t, cols] = result.autoreset
        self.obs[g] = result.obs

    def _infer(self, g: int, policy: Policy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        began = time.perf_counter()
        acted = policy(self.obs[g], self.columns[g])
        self.policy_seconds += time.perf_counter() - began
        return acted

    def _record(self, g: int, out: dict[str, np.ndarray], t: int, acted: tuple[np.ndarray, np.ndarray, np.ndarray],
                with_obs: bool = True) -> None:
        """Step ``t`` of group ``g`` into the rollout: what acting gave and (``with_obs``) the
        observation acted on."""
        cols = self.columns[g]
        if with_obs:
            out["obs"][t, cols] = self.obs[g]
        out["actions"][t, cols], out["behaviour_log_probs"][t, cols], out["behaviour_values"][t, cols] = acted

    def _act(self, g: int, out: dict[str, np.ndarray], t: int, policy: Policy) -> None:
        acted = self._infer(g, policy)
        self.groups[g].send(acted[0])
        # written while the group steps: recv hands back fresh arrays, so the step under way
        # leaves the observation just acted on as it was
        if self.order_free:
            self.arrivals.expect(g, out["obs"], (t, self.columns[g]), self.obs[g])
        else:
            self.sent.append(g)
        self._record(g, out, t, acted, with_obs=not self.order_free)

    def _next_step_end(self) -> tuple[int, StepResult]:
        """The group whose step ends next, and its step: the first to end where groups are
        received order-free, else the first sent."""
        began = time.perf_counter()
        if self.sent:  # in turn; where the mode changed with steps under way, those are received first
            g = self.sent.popleft()
            ended = g, self.groups[g].recv()
        else:
            ended = self.arrivals.next()
        self.step_seconds += time.perf_counter() - began
        return ended

    def _probe(self, out: dict[str, np.ndarray], t: int, policy: Policy) -> None:
        """Step ``t`` for every group at once, with nothing else running in this process: the
        bare step's time."""
        acted = [self._infer(g, policy) for g in range(len(self.groups))]
        for g, group_acted in enumerate(acted):
            self._record(g, out, t, group_acted)
        actions = [group_acted[0] for group_acted in acted]
        began = time.perf_counter()
        for env, group_actions in zip(self.groups, actions, strict=True):
            env.send(group_actions)
        for g, env in enumerate(self.groups):
            self._receive(g, out, t, env.recv())
        self.probes.append(time.perf_counter() - began)
        self.step_seconds += self.probes[-1]

    def collect(self, policy: Policy, out: dict[str, np.ndarray],
                then: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """One rollout into ``out``. A collect that raised leaves steps under way: close the
        collector then, rather than collect again.

        With ``then``, the next rollout's arrays, a group that has finished ``out`` goes on
        into ``then`` instead of waiting for the others (its env threads would idle until the
        last group's step ends): the call returns once every group has finished ``out``, and
        the next call must be given ``then`` as its ``out``, where the groups that ran ahead
        carry on (their steps may still be under way). The caller gives ``then`` only where
        the weights acting now may also act in the next rollout."""
        if self.window_began is None:
            self.window_began = time.perf_counter()
        if self.running_ahead_into is not None and out is not self.running_ahead_into:
            raise ValueError("groups ran ahead into the arrays given as `then` last call: collect into them next")
        self.order_free = self.takes_groups_as_their_steps_end()
        horizon = self.horizon
        last_row = 2 * horizon if then is not None else horizon  # rows a group may reach, over out and then

        def target(row: int) -> tuple[dict[str, np.ndarray], int]:
            return (out, row) if row < horizon else (then, row - horizon)

        def advance(g: int) -> None:
            """Group ``g``'s next move once its last step is received."""
            row = self.received[g]
            if row in (horizon, last_row):
                target(row - 1)[0]["next_obs"][self.columns[g]] = self.obs[g]
            if row == last_row:
                return
            if (self.steps_taken + row) % PROBE_EVERY == 0:
                self.at_probe.add(g)
            else:
                self._act(g, *target(row), policy)
                self.acted[g] += 1

        for g in range(len(self.groups)):
            if self.acted[g] == self.received[g] and g not in self.at_probe:
                advance(g)
        while min(self.received) < horizon:
            if len(self.at_probe) == len(self.groups):  # every group is at the same step
                self._probe(*target(self.received[0]), policy)
                self.at_probe.clear()
                for g in range(len(self.groups)):
                    self.acted[g] += 1
                    self.received[g] += 1
                    advance(g)
                continue
            g, result = self._next_step_end()
            self._receive(g, *target(self.received[g]), result)
            self.received[g] += 1
            advance(g)
        for g in range(len(self.groups)):
            self.acted[g] -= horizon
            self.received[g] -= horizon
        self.running_ahead_into = then if any(self.acted) else None
        self.steps_taken += horizon
        self.window_steps += horizon
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
        still_stepping = self.arrivals.close() if self.arrivals is not None else set()
        for g, env in enumerate(self.groups):
            if g not in still_stepping:  # closing an env a thread is inside could crash the process
                env.close()


def allocate(spec: EnvSpec, horizon: int, num_envs: int) -> dict[str, np.ndarray]:
    return {name: np.zeros(shape, dtype) for name, (shape, dtype) in rollout_arrays(spec, horizon, num_envs).items()}


class NetworkPolicy:
    """A ``contracts.Policy``'s ``act`` as a rollout :data:`Policy`: the collector's env i,
    whose environment has seed ``first_env_seed + i``, draws its actions from that seed's
    stream (``acting_noise``), never from the learner's generator, so acting is the same
    whichever process or rank steps the env, and however many random numbers an update draws
    (a policy that samples from torch's generator finds it seeded per call:
    ``EnvStreams.acting``).
    """

    def __init__(self, policy: ActingPolicy, device: torch.device, first_env_seed: int, num_envs: int,
                 learns_in_cuda_graphs: bool = False):
        self.policy, self.device = policy, device
        self.cuda = device.type == "cuda"
        self.streams = acting_noise.EnvStreams(np.arange(num_envs) + first_env_seed, device)
        # inference mode, not only no_grad: no version counters or view tracking on any tensor
        # of the pass; its outputs leave as numpy at once, so none reaches an autograd graph.
        # But not where the learner records CUDA graphs of this very network: a first recording
        # in inference mode makes the CUDA generator's graph state inference tensors, and the
        # learner's recording outside it then fails to update them (pytorch#135892)
        self.grad_free = torch.no_grad if learns_in_cuda_graphs else torch.inference_mode

    def __call__(self, obs: np.ndarray, envs: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self.grad_free(), self.streams.acting(envs):
            acted = self.policy.act_and_value(torch.from_numpy(obs).to(self.device, non_blocking=self.cuda))
        return tuple(tensor.cpu().numpy() for tensor in acted)
