"""Actor process: owns groups of EnvPools and a Policy replica (never the whole algorithm),
fills shared-memory slots.

Loop: wait for a free slot (heartbeating while it waits) -> load the policy version to
act with (waiting for it when the lag bound asks for newer weights than are published)
-> collect one rollout straight into the slot (groups that finish it run on into the next
free slot where the weights held may act there too) -> ring the doorbell. The process
exits by itself when told to stop, when its parent disappears (the runner was killed),
or after reporting its own exception to the runner.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import zmq

from ..config import ACTOR_HEARTBEAT_S, from_dict
from ..envs import make_env_groups
from . import control, signals
from .layout import resolve_env_groups
from .rollout import NetworkPolicy, RolloutCollector
from .slots import SharedWeights, SlotPool


class ParentGone(Exception):
    pass


class StopRequested(Exception):
    pass


@dataclass
class ActorProcessArgs:
    """Everything an actor process is started with (picklable; tensors travel as shared memory)."""

    index: int  # which actor process: 0 .. K - 1
    cfg: dict
    env_start: int  # index of this actor's first env among all envs (seeds follow it)
    num_envs: int
    env_threads: int
    pool: SlotPool
    weights: SharedWeights
    free_slots: list[int]
    endpoint: control.Endpoint
    parent_pid: int
    # the learner consumes this actor process's rollouts in order, each in updates_per_rollout
    # updates: rollout r is consumed from version first_version + r * updates_per_rollout on,
    # which fixes the weights it may act with
    first_version: int
    oldest_version: int  # the first version published in this run (the start, or the resumed one)
    lag_bound: int | None  # the newest weights at most this many versions old; None: unbounded
    updates_per_rollout: int = 1  # > 1: replay-based learning publishes within a rollout (algo.publish_interval)


def actor_process_main(args: ActorProcessArgs) -> None:
    signals.ignore_in_child()  # Ctrl-C reaches the whole group; the runner stops us
    torch.set_num_threads(1)
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.IDENTITY, control.process_identity(args.index))
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(args.endpoint.address)
    bound = args.endpoint.socket_identity()  # the runner's socket, bound before its actors start
    actor = None
    try:
        control.send(socket, {"type": "hello", "process": args.index, "pid": os.getpid()})
        actor = ActorProcess(args, socket)
        actor.run()
    except StopRequested:
        pass
    except ParentGone:
        # the runner was killed (kill -9) and cannot remove its socket and folder: the first of
        # its actor processes to notice does, unless a resumed run already bound its own there
        args.endpoint.close_if_still(bound)
    except BaseException:
        try:
            control.send(socket, {"type": "error", "process": args.index, "pid": os.getpid(), "traceback": traceback.format_exc()})
            time.sleep(0.2)  # let the message leave before the socket closes
        except zmq.ZMQError:
            pass
        raise SystemExit(1) from None
    finally:
        if actor is not None:
            actor.close()
        socket.close(0)
        context.term()


class ActorProcess:
    def __init__(self, args: ActorProcessArgs, socket: zmq.Socket):
        from ..algos import compile_mode, make_policy

        self.args = args
        self.socket = socket
        self.free = deque(args.free_slots)
        self.cfg = cfg = from_dict(args.cfg)
        wanted = cfg.actors.device
        if wanted == "auto":
            wanted = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(wanted)
        groups = make_env_groups(cfg.env, args.num_envs, cfg.seed + args.env_start, args.env_threads,
                                 resolve_env_groups(cfg, 1))
        self.collector = RolloutCollector(groups, cfg.algo.rollout_length)
        self.replica = make_policy(groups[0].spec, cfg, self.device).requires_grad_(False)  # the learner's Policy, published
        self.act = NetworkPolicy(self.replica, self.device, cfg.seed + args.env_start, args.num_envs)
        if compile_mode(cfg, groups[0].spec, self.device) is not None:
            self._compile_within_startup_grace()
        # off-policy learning that publishes within a rollout: act with each new version as it appears
        self.refresh_within_rollout = args.updates_per_rollout > 1 and args.lag_bound is None and not cfg.actors.deterministic_lag
        self.held_version = -1
        self._last_beat = 0.0

    def _compile_within_startup_grace(self) -> None:
        """Acts once on each group's first observations, then rewinds the acting streams:
        compiling the network (tens of seconds on a CPU) happens here, before the first
        heartbeat, rather than between two heartbeats of the first rollout, where the runner
        would take the silence for a stalled actor."""
        with self.act.streams.rewound_after():
            for obs, columns in zip(self.collector.obs, self.collector.columns, strict=True):
                self.act(obs, columns)

    def beat(self) -> bool:
        now = time.monotonic()
        if now - self._last_beat >= ACTOR_HEARTBEAT_S:
            if os.getppid() != self.args.parent_pid:
                raise ParentGone
            control.send(self.socket, {"type": "beat", "process": self.args.index, "pid": os.getpid()})
            self._last_beat = now
        return False

    def drain(self, block_s: float = 0.0) -> bool:
        """Handle learner messages, waiting up to ``block_s`` for the first; never stops the caller."""
        if self.socket.poll(int(block_s * 1000)):
            while True:
                try:
                    message = control.decode(self.socket.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                if message["type"] == "stop":
                    raise StopRequested
                if message["type"] == "free":
                    self.free.append(int(message["slot"]))
        return False

    def waiting(self) -> bool:
        return self.beat() or self.drain()

    def policy(self, obs: np.ndarray, envs: slice):
        self.beat()
        if self.refresh_within_rollout and int(self.args.weights.latest[0]) > self.held_version:
            self.held_version = self.args.weights.fetch(self.replica, at_least=self.held_version + 1, should_stop=self.waiting)
        return self.act(obs, envs)

    def consumed_at(self, rollout: int) -> int:
        """The version from which the learner learns from rollout ``rollout``."""
        return self.args.first_version + rollout * self.args.updates_per_rollout

    def oldest_allowed(self, rollout: int) -> int:
        """The oldest version that may act in rollout ``rollout`` under the lag bound: its last
        piece is learned ``updates_per_rollout - 1`` versions after its first."""
        return self.consumed_at(rollout) + self.args.updates_per_rollout - 1 - self.args.lag_bound

    def fetch_weights(self, rollout: int) -> int:
        """Load the weights rollout ``rollout`` acts with; returns their version."""
        args = self.args
        consumed_at = self.consumed_at(rollout)
        if self.cfg.actors.deterministic_lag:  # exactly one version old
            exactly, at_least = max(args.oldest_version, consumed_at - 1), None
        else:
            exactly = None
            at_least = args.oldest_version if args.lag_bound is None else max(args.oldest_version, self.oldest_allowed(rollout))
        return args.weights.fetch(self.replica, exactly, at_least, timeout_s=3600, should_stop=self.waiting)

    def may_act_in(self, rollout: int) -> bool:
        """Whether the weights held now may also act in rollout ``rollout``."""
        if self.cfg.actors.deterministic_lag:
            return False
        bound = self.args.lag_bound
        return bound is None or self.held_version >= self.oldest_allowed(rollout)

    def runs_ahead_into(self, rollout: int) -> bool:
        """Whether the groups that finish the rollout under way go on into rollout ``rollout``'s
        slot: where the weights held may act there, and the groups are taken as their steps
        end. Short steps taken in turn leave the env threads idle only for one group's step
        a rollout, and running ahead would act on older weights in each rollout's first step
        for nothing: IMPALA's CartPole test with two actor processes then collapsed late in 2 of
        18 runs, and in none of 28 without it."""
        return self.collector.takes_groups_as_their_steps_end() and self.may_act_in(rollout)

    def run(self) -> None:
        args, pool = self.args, self.args.pool
        views: dict[int, dict[str, np.ndarray]] = {}  # one object per slot: collect's `then` is the next call's `out`

        def arrays(slot: int) -> dict[str, np.ndarray]:
            if slot not in views:
                views[slot] = pool.numpy_views(slot)
            return views[slot]

        rollout = 0
        ahead: tuple[int, int] | None = None  # the slot the groups ran ahead into, and the version they began it with
        while True:
            self.drain()
            if ahead is None:
                while not self.free:  # back-pressure: the learner holds every slot of ours
                    self.beat()
                    self.drain(0.1)
                slot = self.free.popleft()
                version = self.held_version = self.fetch_weights(rollout)
            else:  # part of this rollout acted with the older weights: its version is theirs
                slot, version = ahead
                self.held_version = self.fetch_weights(rollout)
            ahead = (self.free.popleft(), self.held_version) if self.free and self.runs_ahead_into(rollout + 1) else None
            self.collector.collect(self.policy, arrays(slot), arrays(ahead[0]) if ahead else None)
            pool.version[slot] = version
            returns, lengths = self.collector.pop_episodes()
            timings = self.collector.pop_timings()
            control.send(self.socket, {
                "type": "ready", "process": args.index, "pid": os.getpid(), "slot": slot, "version": version,
                "returns": returns, "lengths": lengths,
                "step_s": timings.step_s, "policy_s": timings.inference_s, "wall_s": timings.wall_s,
                "env_busy_s": timings.env_busy_s,
            })
            rollout += 1

    def close(self) -> None:
        self.collector.close()
