"""How long ``send`` holds up the Python thread, with the env library's worker threads under
Linux's default scheduling policy and under SCHED_BATCH (what ``make_env`` gives them).

Each cell builds one pool of Pong envs, then times ``send`` and ``recv`` of every step
(random actions are not needed: the step's cost is the emulator's either way). Under the
default policy a worker woken by ``send`` may preempt the thread that woke it; under
SCHED_BATCH it waits for its core. The policies are set here by thread id, whatever
``make_env`` did, so one checkout measures both.

    python benchmarks/send_wakeup.py [--steps 200] [--envs 16 --envs 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from parallel_rl.config import build_config
from parallel_rl.envs import ale_games, envpool_ids, make_env, threads_started

POLICIES = {"default": "SCHED_OTHER", "batch": "SCHED_BATCH"}


def timed_steps(backend: str, envs: int, threads: int, policy: str, steps: int) -> tuple[float, float, float]:
    """``send``'s mean and 90th-percentile milliseconds and ``recv``'s mean over ``steps`` steps
    (after 10 unrecorded). The mean, not the median: a send that is preempted is held up for
    a whole slice of the worker's step, and only some sends are."""
    cfg = build_config("paac_atari", {"env.id": "Pong-v5", "env.backend": backend})
    with threads_started() as workers:
        env = make_env(cfg.env, envs, 1, threads)
    try:
        for tid in workers:
            os.sched_setscheduler(tid, getattr(os, POLICIES[policy]), os.sched_param(0))
        env.reset()
        actions = np.zeros(envs, np.int64)
        send_s, recv_s = [], []
        for step in range(steps + 10):
            began = time.perf_counter()
            env.send(actions)
            sent = time.perf_counter()
            env.recv()
            if step >= 10:
                send_s.append(sent - began)
                recv_s.append(time.perf_counter() - sent)
        return 1e3 * statistics.fmean(send_s), 1e3 * float(np.percentile(send_s, 90)), 1e3 * statistics.fmean(recv_s)
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--envs", type=int, action="append", default=[])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not hasattr(os, "sched_setscheduler"):
        sys.exit("scheduling policies are Linux's: nothing to measure here")
    if args.steps < 1 or args.threads < 1 or any(n < 1 for n in args.envs):
        parser.error(f"--steps ({args.steps}), --threads ({args.threads}) and --envs ({args.envs}) must be 1 or more")
    backends = [name for name, ids in (("envpool", envpool_ids()), ("ale", ale_games())) if "Pong-v5" in ids]
    print("| backend | envs | threads | policy | send (ms, mean) | send (ms, 90th percentile) | recv (ms, mean) |\n"
          "|---|---:|---:|---|---:|---:|---:|")
    for backend in backends:
        for envs in args.envs or [16, 128]:
            for policy in POLICIES:
                send_ms, send_p90_ms, recv_ms = timed_steps(backend, envs, args.threads, policy, args.steps)
                print(f"| {backend} | {envs} | {args.threads} | {POLICIES[policy]} | {send_ms:.3f} | {send_p90_ms:.3f} | {recv_ms:.3f} |",
                      flush=True)


if __name__ == "__main__":
    main()
