"""Where batches come from: inline collection (K = 0) or K actor processes (K >= 1).

Both sources hand the learner one batch per update holding one rollout of every env, so
the algorithm code is identical in both modes. Actor processes act with weights at most
``policy_lag_bound`` versions old (0 for algorithms without an off-policy correction:
the same algorithm as K = 0), waiting for newer ones when they run ahead, or, in
deterministic-lag mode, with exactly the previous version; the lag is measured.
"""

from __future__ import annotations

import os
import time
from collections import deque
from multiprocessing.process import BaseProcess
from pathlib import Path

import numpy as np
import torch
import zmq

from ..algos import compile_mode
from ..algos.base import policy_lag_bound
from ..config import Config
from ..contracts import Batch, Delivery
from ..envs import EnvSpec, make_env_groups
from . import control, supervision
from .actor import ActorProcessArgs, actor_process_main
from .layout import check_policy_lag_fits, resolve_env_groups, rollout_pieces, split_envs
from .rollout import (
    NetworkPolicy,
    RolloutCollector,
    allocate,
    rollout_arrays,
)
from .slots import SharedWeights, SlotPool

STARTUP_GRACE_S = 120.0  # spawning, importing torch and building EnvPools before the first heartbeat


class ActorProcessFailure(RuntimeError):
    """An actor process died, stalled or raised; the message names it and says how."""


class InlineSource:
    """K = 0: the actor loop runs in the learner's process with the learner's own network."""

    mode = "synchronous"

    def __init__(self, cfg: Config, spec: EnvSpec, algo, device: torch.device, env_threads: int):
        self.device = device  # the network is reached through self.policy
        self.policy = NetworkPolicy(algo.policy(), device, cfg.seed, cfg.actors.num_envs,
                                    learns_in_cuda_graphs=compile_mode(cfg, spec, device) == "reduce-overhead")
        groups = make_env_groups(cfg.env, cfg.actors.num_envs, cfg.seed, env_threads, resolve_env_groups(cfg, 0))
        # acting and learning take turns: collect only what the learner learns from before it
        # publishes (a whole rollout on-policy; a few steps for replay, algo.publish_interval)
        self.segment_length = cfg.algo.segment_length(cfg.actors.num_envs)
        self.collector = RolloutCollector(groups, self.segment_length)
        self.arrays = allocate(spec, self.segment_length, cfg.actors.num_envs)

    def next_batch(self, version: int, should_stop) -> Delivery | None:
        arrays = self.collector.collect(self.policy, self.arrays)
        began = time.perf_counter()
        batch = Batch.from_arrays(arrays, self.device)
        copy_s = time.perf_counter() - began
        returns, lengths = self.collector.pop_episodes()
        timings = self.collector.pop_timings()
        return Delivery(batch, returns, lengths, {"step": timings.step_s, "inference": timings.inference_s, "copy": copy_s},
                        lag=[0], producers=[os.getpid()], env_busy_s=timings.env_busy_s, env_wall_s=timings.wall_s)

    def published(self, version: int) -> None:
        pass

    def diagnostics(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        self.collector.close()


class ActorProcessPool:
    """K actor processes filling shared-memory slots; supervised by heartbeats and exit codes."""

    mode = "asynchronous"

    def __init__(self, cfg: Config, spec: EnvSpec, algo, device: torch.device, procs: int, run_dir: Path | None,
                 env_threads: int, start_version: int, log=print):
        self.cfg, self.algo, self.device, self.log = cfg, algo, device, log
        self.procs = procs
        self.envs_per_process = split_envs(cfg.actors.num_envs, procs)
        self.env_starts = [sum(self.envs_per_process[:k]) for k in range(procs)]
        self.env_threads = env_threads
        self.oldest_version = self.version = start_version
        self.lag_bound = policy_lag_bound(cfg)
        self.segment_length, self.updates_per_rollout = rollout_pieces(cfg)
        check_policy_lag_fits(cfg, procs)
        # what close() releases exists from the start, so a failure or an interrupt part-way
        # through construction releases whatever was already built
        self.processes: list[BaseProcess | None] = [None] * procs
        self.endpoint: control.Endpoint | None = None
        self.context: zmq.Context | None = None
        self.socket: zmq.Socket | None = None
        # a learner on the CPU learns from the actors' slots in place (SlotPool.block), holding them
        # until it asks for the next batch: one slot more each keeps actors.slots_per_actor to fill meanwhile
        self.in_place = device.type == "cpu"
        self.held: list[int] = []  # the slots the learner's current batch is
        # slots freed while their actor process could not be reached (a replacement still starting):
        # sent when it says hello
        self.unsent_frees: list[list[int]] = [[] for _ in range(procs)]
        # whether each actor process has said hello since it was started: a free sent before that
        # could go to the connection of the process it replaced, which ZMQ may not yet have seen
        # close, and be lost without an error, leaving the replacement a slot short for ever
        self.greeted = [False] * procs
        try:
            self.pool = SlotPool(spec, cfg.algo.rollout_length, self.envs_per_process,
                                 cfg.actors.slots_per_actor + self.in_place)
            self.weights = SharedWeights(algo.policy())
            self.weights.publish(algo.policy(), start_version)
            self.endpoint = control.Endpoint(run_dir)
            for stale in self.endpoint.clean_stale():
                log(f"removed a stale socket left by an earlier run that was killed: {stale}")
            self.context = zmq.Context()
            self.socket = self.context.socket(zmq.ROUTER)
            self.socket.setsockopt(zmq.LINGER, 0)
            self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self.socket.bind(self.endpoint.address)
            self.ready: list[deque] = [deque() for _ in range(procs)]
            self.started_at = [0.0] * procs
            self.last_seen: list[float | None] = [None] * procs
            self.restarts = 0
            pinned = device.type == "cuda"
            # the copy to the device out of the staging buffers runs without blocking: the next
            # batch may be written into them only once the device has read this one
            self.staging_read: torch.cuda.Event | None = None
            self.staging = {
                name: torch.from_numpy(np.zeros(shape, dtype)).pin_memory() if pinned else None
                for name, (shape, dtype) in rollout_arrays(spec, cfg.algo.rollout_length, cfg.actors.num_envs).items()
            }
            for k in range(procs):
                self._start(k, self.pool.slots_of(k))
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- processes
    def _start(self, k: int, free_slots: list[int]) -> None:
        # rollouts it already delivered are consumed first, one per update
        first_version = self.version + len(self.ready[k]) * self.updates_per_rollout
        args = ActorProcessArgs(k, self.cfg.to_dict(), self.env_starts[k], self.envs_per_process[k], self.env_threads,
                         self.pool, self.weights, free_slots, self.endpoint, os.getpid(),
                         first_version, self.oldest_version, self.lag_bound, self.updates_per_rollout)
        supervision.start(actor_process_main, (args,), f"parallel-rl-actor-{k}",
                          on_created=lambda process: self.processes.__setitem__(k, process))
        self.started_at[k] = time.monotonic()
        self.last_seen[k] = None
        self.greeted[k] = False

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p is not None and p.pid is not None]

    def _failed(self, k: int, reason: str) -> None:
        if not self.cfg.actors.restart_actors:
            raise ActorProcessFailure(reason)
        self.log(f"{reason}; restarting it (actors.restart_actors = true)")
        process = self.processes[k]
        if process is not None:
            supervision.kill([process])
        # slots it had filled and sent stay valid (the learner holds none here: it freed its batch's
        # before supervising); every other slot of its own is free again, the unsent frees too
        delivered = {slot for slot, _ in self.ready[k]}
        self.unsent_frees[k] = []
        self.restarts += 1
        self._start(k, [s for s in self.pool.slots_of(k) if s not in delivered])

    def supervise(self) -> None:
        now = time.monotonic()
        for k, process in enumerate(self.processes):
            if process is None:
                continue
            if process.exitcode is not None:
                self._failed(k, supervision.describe_exit(f"actor process {k}", process) + " mid-run")
                continue
            seen = self.last_seen[k]
            timeout = self.cfg.actors.heartbeat_timeout_s
            if seen is None:
                if now - self.started_at[k] > STARTUP_GRACE_S:
                    self._failed(k, f"actor process {k} (pid {process.pid}) did not start within {STARTUP_GRACE_S:.0f} s")
            elif now - seen > timeout:
                self._failed(k, f"actor process {k} (pid {process.pid}) sent no heartbeat for {now - seen:.1f} s "
                                f"(actors.heartbeat_timeout_s = {timeout}): it is stalled (stopped or hung)")

    # ---------------------------------------------------------------- messages
    def _receive(self, timeout_s: float) -> None:
        if not self.socket.poll(int(timeout_s * 1000)):
            return
        while True:
            try:
                _, payload = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            message = control.decode(payload)
            k = int(message["process"])
            process = self.processes[k]
            if process is None or message["pid"] != process.pid:
                # sent by a process killed since and replaced: its slots went to the replacement
                # (a "ready" would hand over a slot the replacement now writes) and its beats are not the replacement's
                continue
            kind = message["type"]
            if kind != "hello":  # building envs comes after hello; the start-up grace covers it
                self.last_seen[k] = time.monotonic()
            if kind == "hello":
                self.greeted[k] = True
                unsent, self.unsent_frees[k] = self.unsent_frees[k], []
                for slot in unsent:
                    self._release(slot)
            elif kind == "ready":
                self.ready[k].append((int(message["slot"]), message))
            elif kind == "error":
                raise ActorProcessFailure(f"actor process {k} raised an exception:\n{message['traceback'].rstrip()}")

    def _release(self, slot: int) -> None:
        k = self.pool.owner(slot)
        if not self.greeted[k]:
            self.unsent_frees[k].append(slot)  # sent when it says hello
            return
        try:
            control.send(self.socket, {"type": "free", "slot": slot}, control.process_identity(k))
        except zmq.ZMQError:
            # not connected: gone (its replacement starts with this slot free) or a replacement still
            # starting, which the slot would never reach: sent again when it says hello
            self.unsent_frees[k].append(slot)

    def next_batch(self, version: int, should_stop) -> Delivery | None:
        self.version = version
        # the learner asks for a batch once it has learned from the one before
        for slot in self.held:
            self._release(slot)
        self.held = []
        began = time.perf_counter()
        while True:
            if should_stop():  # before supervising: actor processes that die once a stop is under way are no failure
                return None
            # read what arrived during the update first: heartbeats queued in the socket
            # while the learner was busy must not look like silence
            self._receive(0.0)
            self.supervise()
            if all(self.ready):
                break
            self._receive(0.05)
        wait_s = time.perf_counter() - began
        taken = [self.ready[k].popleft() for k in range(self.procs)]
        slots = [slot for slot, _ in taken]
        began = time.perf_counter()
        staged = self.pool.block(slots) if self.in_place else None
        if staged is not None:
            self.held = slots
        else:  # a device learner, or a restarted actor process out of step with the others' slots
            if self.staging_read is not None:
                self.staging_read.synchronize()
            staged = self.pool.read(slots, self.staging if self.device.type == "cuda" else None)
            for slot in slots:
                self._release(slot)
        batch = Batch.from_arrays(staged, self.device)
        if self.device.type == "cuda":
            self.staging_read = torch.cuda.Event()
            self.staging_read.record(torch.cuda.current_stream(self.device))
        copy_s = time.perf_counter() - began
        delivery = Delivery(batch)
        delivery.timings = {"wait": wait_s, "copy": copy_s, "step": 0.0, "inference": 0.0}
        for _, message in taken:
            delivery.returns += message["returns"]
            delivery.lengths += message["lengths"]
            delivery.lag.append(version - int(message["version"]))
            delivery.producers.append(int(message["pid"]))
            delivery.timings["step"] += message["step_s"] / self.procs
            delivery.timings["inference"] += message["policy_s"] / self.procs
            delivery.env_busy_s += message["env_busy_s"]
            delivery.env_wall_s += message["wall_s"]
        return delivery

    def diagnostics(self) -> dict[str, float]:
        return {"diag/queue_fill": self.queue_fill(), "diag/actor_restarts": self.restarts}

    def queue_fill(self) -> float:
        """Fraction of all slots filled and waiting for the learner."""
        return min(1.0, sum(len(q) for q in self.ready) / (self.procs * self.cfg.actors.slots_per_actor))

    def published(self, version: int) -> None:
        self.version = version
        self.weights.publish(self.algo.policy(), version)

    # ---------------------------------------------------------------- shutdown
    def close(self) -> None:
        """Stop every actor process (asking first, killing after supervision.STOP_GRACE_S), then release the socket;
        safe on a pool whose construction stopped part-way."""
        started = [(k, p) for k, p in enumerate(self.processes) if p is not None and p.pid is not None]

        def ask(i: int) -> None:
            if self.socket is not None:
                try:
                    control.send(self.socket, {"type": "stop"}, control.process_identity(started[i][0]))
                except zmq.ZMQError:
                    pass  # not connected yet (still starting) or gone: killed after the grace

        try:
            supervision.stop([p for _, p in started], ask)
        finally:  # a second Ctrl-C during the grace still kills them and releases the socket
            supervision.kill([p for _, p in started], grace_s=supervision.STOP_GRACE_S)
            if self.socket is not None:
                self.socket.close(0)
            if self.context is not None:
                self.context.term()
            if self.endpoint is not None:
                self.endpoint.close()
