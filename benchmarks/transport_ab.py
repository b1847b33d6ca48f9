"""Transport of one or two checkouts side by side, each measurement in a fresh process, as a run is.

    python benchmarks/transport_ab.py OLD_CHECKOUT NEW_CHECKOUT --rounds 4
    python benchmarks/transport_ab.py A B --set actors.num_threads=2 --seconds 15
    python benchmarks/transport_ab.py . --groups-bare --rounds 4

Each round runs, each in a process of its own and for ``--seconds``: raw stepping of the
envs with each checkout's code (``bench``'s raw figure, the actors' threads), then each
checkout's pipeline (``bench``'s transport probe: a uniformly random policy and a learner
that learns nothing), each pipeline's ratio taken to its own checkout's raw figure. The
checkouts take turns within a round, in reversed order every other round, so drift of a
shared machine lands on both.

``--groups-bare`` adds a third figure to each round: the actor process's own env groups
(the same pools, envs and threads) stepped alternately in a fixed order, by a
loop that does nothing else (no inference, no copies into slots, no messages). What the
pipeline loses against raw stepping splits into what stepping the envs in alternating
groups costs by itself (this figure against raw) and what the pipeline adds (the
pipeline against this figure). Only one actor process (``--actor-procs 1``) has one such loop.
The collector takes groups whose steps are long (Pong's) in the order their steps end, not
in this loop's fixed order: this figure is the fixed order's.

``--thread-cpu`` adds, for each measurement, where the CPU went while it measured: every
thread of its processes sampled from ``/proc`` over the middle half of the measurement, as
a share of one core (the Python thread of each process apart from its other threads: env
threads, ZeroMQ's), and the cores left idle. Printed per measurement, not reduced.

Why not ``bench`` itself: it measures one checkout, with its phases in one process. Runs of
the two, alternated, agreed within the machine's run-to-run spread (docs/benchmarks.md,
"Where the last 5% is not"); a comparison of two checkouts needs them in the same rounds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from arguments import refuse_bad_configs, require_positive  # beside this script

MEASURE = """
import json, sys
from dataclasses import replace
from parallel_rl.bench import actor_threads, raw_env_sps, train_sps, transport_config
from parallel_rl.config import build_config
phase, seconds, env, actors, procs, *sets = sys.argv[1:]
cfg = build_config("paac_atari", {"env.id": env, "actors.num_envs": int(actors), "actors.procs": int(procs)}, sets)
cfg = replace(cfg, total_steps=10**12)
if phase == "raw":
    sps = raw_env_sps(cfg, float(seconds), actor_threads(cfg))
elif phase == "groups_bare":
    sps = groups_bare_sps(cfg, float(seconds))
else:
    sps = train_sps(transport_config(cfg), float(seconds))
print(json.dumps({"sps": sps}))
"""

GROUPS_BARE = """
import time
import numpy as np
from parallel_rl.envs import make_env_groups
from parallel_rl.runtime.layout import resolve_env_groups, thread_layout

def groups_bare_sps(cfg, seconds):
    groups = make_env_groups(cfg.env, cfg.actors.num_envs, cfg.seed, thread_layout(cfg, 1)[1], resolve_env_groups(cfg, 1))
    try:
        rng = np.random.default_rng(cfg.seed)
        actions = [rng.integers(g.spec.num_actions, size=(64, g.num_envs)).astype(np.int32) for g in groups]
        ids = [np.arange(g.num_envs, dtype=np.int32) for g in groups]
        envpool = groups[0].spec.backend == "envpool"
        for g in groups:
            g.reset()
        raws = [g._env for g in groups]
        for raw, a, i in zip(raws, actions, ids):
            raw.send(a[0], i) if envpool else raw.send(a[0])
        steps, start = 1, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for raw, a, i in zip(raws, actions, ids):
                raw.recv()
                raw.send(a[steps % 64], i) if envpool else raw.send(a[steps % 64])
            steps += 1
        return (steps - 1) * cfg.actors.num_envs / elapsed
    finally:
        for g in groups:
            g.close()
"""


def thread_ticks(root: int, root_label: str) -> dict:
    """CPU ticks (user + system) of every thread of ``root`` and its child processes, by
    (process label, tid), and the machine's idle ticks under "idle"."""
    pids, ticks = [root], {}
    with open("/proc/stat") as f:
        fields = f.readline().split()  # cpu user nice system idle iowait ...
    ticks["idle"] = int(fields[4]) + int(fields[5])
    while pids:
        pid = pids.pop()
        try:
            with open(f"/proc/{pid}/cmdline") as f:
                if "resource_tracker" in f.read():
                    continue  # multiprocessing's helper, no part of the pipeline
            label = root_label if pid == root else f"actor process {pid}"
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                ticks[(label, int(tid) == pid, int(tid))] = int(fields[11]) + int(fields[12])
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                pids += [int(child) for child in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            pass
    return ticks


def cpu_shares(before: dict, after: dict, seconds: float) -> str:
    """One line: each process's Python thread and its other threads as shares of one core, and
    the machine's idle time (all processes, in cores)."""
    per_core = os.sysconf("SC_CLK_TCK") * seconds
    rows: dict[str, float] = {}
    for key, ticks in after.items():
        if key == "idle":
            continue
        label, is_python, _ = key
        role = f"{label} {'Python thread' if is_python else 'other threads'}"
        rows[role] = rows.get(role, 0.0) + (ticks - before.get(key, ticks)) / per_core
    idle = (after["idle"] - before["idle"]) / per_core
    cells = ", ".join(f"{role} {share:.1%}" for role, share in sorted(rows.items()) if share >= 0.0005)
    return f"{cells}; the machine idle {idle:.1%} of a core"


def add_checkouts_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkouts", nargs="+", help="one or two source trees (each holding parallel_rl/)")


def turn_order(contenders: list, round_: int) -> list:
    """The contenders in the order round ``round_`` (from 0) measures them: each round starts
    one later (two are reversed every other round), so that steady drift of a shared machine
    favours none."""
    start = round_ % len(contenders)
    return list(contenders[start:]) + list(contenders[:start])


def refuse_bad_checkouts(parser: argparse.ArgumentParser, checkouts: list[str]) -> None:
    """Exit 2 (through ``parser``) on more than two checkouts or on a folder without the package."""
    if len(checkouts) > 2:
        parser.error(f"give one or two checkouts, not {len(checkouts)}")
    for checkout in checkouts:
        if not os.path.isfile(os.path.join(checkout, "parallel_rl", "__init__.py")):
            parser.error(f"checkout {checkout!r} holds no parallel_rl package: give source trees of this project, "
                         "e.g. `git worktree add /tmp/before COMMIT` and `.`")


def in_checkout(checkout: str) -> dict:
    """``subprocess`` arguments that run a child on ``checkout``'s package, whatever is installed."""
    return {"env": {**os.environ, "PYTHONPATH": os.path.abspath(checkout)}, "cwd": os.path.abspath(checkout)}


def measure(checkout: str, phase: str, args: argparse.Namespace) -> float:
    command = [sys.executable, "-c", GROUPS_BARE + MEASURE, phase, str(args.seconds), args.env, str(args.actors), str(args.actor_procs), *args.set]
    # files, not pipes: a child writing more than a pipe holds while it is only polled would block
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr, \
            subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, **in_checkout(checkout)) as process:
        if args.thread_cpu:
            # sampled throughout; the measurement is the last ``seconds`` before the process exits
            root_label = "learner" if phase == "pipeline" else "the stepping process"
            samples = [(time.monotonic(), thread_ticks(process.pid, root_label))]
            while process.poll() is None:
                time.sleep(0.5)
                samples.append((time.monotonic(), thread_ticks(process.pid, root_label)))
        process.wait()
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read(), stderr.read()
    if process.returncode:
        sys.exit(f"measuring {phase} with {checkout} failed (exit code {process.returncode}):\n{err.strip()}")
    sps = json.loads(out.strip().splitlines()[-1])["sps"]
    if args.thread_cpu:
        print(f"  {phase} {checkout}: {sps:,.0f} agent steps/s | {middle_half_shares(samples, args.seconds)}", flush=True)
    return sps


def middle_half_shares(samples: list, seconds: float) -> str:
    """The CPU shares over the middle half of the measurement: it ends with the last sample
    that saw the processes' CPU time grow (after it they only exit) and lasted ``seconds``."""
    busy = [sum(v for k, v in ticks.items() if k != "idle") for _, ticks in samples]
    end = max((i + 1 for i, (a, b) in enumerate(itertools.pairwise(busy)) if b > a), default=len(samples) - 1)
    end_time = samples[end][0]
    start_time, stop_time = end_time - 0.75 * seconds, end_time - 0.25 * seconds
    first = min(samples, key=lambda s: abs(s[0] - start_time))
    last = min(samples, key=lambda s: abs(s[0] - stop_time))
    return cpu_shares(first[1], last[1], max(last[0] - first[0], 1e-9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkouts_argument(parser)
    parser.add_argument("--env", default="Pong-v5")
    parser.add_argument("--actors", type=int, default=256)
    parser.add_argument("--actor-procs", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--thread-cpu", action="store_true", help="also print where the CPU went in each measurement (see above)")
    parser.add_argument("--groups-bare", action="store_true",
                        help="also step the actor process's env groups alternately with nothing else (see above)")
    args = parser.parse_args()
    require_positive(parser, args, "rounds", "seconds", "actors")
    refuse_bad_checkouts(parser, args.checkouts)
    refuse_bad_configs(parser, ["paac_atari"], {"env.id": args.env, "actors.num_envs": args.actors,
                                                "actors.procs": args.actor_procs}, args.set)
    if args.groups_bare and args.actor_procs != 1:
        parser.error(f"--groups-bare measures one actor process's loop; --actor-procs is {args.actor_procs}, give 1")
    # raw stepping with each checkout's own code (a change may touch how envs are made), and
    # the checkouts' order reversed every other round, so that drift lands on each alike
    raw: dict[str, list[float]] = {c: [] for c in args.checkouts}
    bare: list[float] = []
    pipeline: dict[str, list[float]] = {c: [] for c in args.checkouts}
    for r in range(args.rounds):
        order = turn_order(args.checkouts, r)
        for checkout in order:
            raw[checkout].append(measure(checkout, "raw", args))
        if args.groups_bare:
            bare.append(measure(args.checkouts[0], "groups_bare", args))
        for checkout in order:
            pipeline[checkout].append(measure(checkout, "pipeline", args))
        print(f"round {r + 1}: " + ", ".join(f"raw {c} {v[-1]:,.0f}" for c, v in raw.items()) + ", "
              + (f"groups bare {bare[-1]:,.0f}, " if bare else "") + ", ".join(f"{c} {v[-1]:,.0f}" for c, v in pipeline.items()),
              flush=True)
    base = {c: statistics.median(v) for c, v in raw.items()}
    print(f"\n| measurement | agent steps/s (median of {args.rounds}) | ratio to raw |\n|---|---:|---:|")
    for checkout, values in raw.items():
        print(f"| raw stepping, {checkout} ({' / '.join(f'{v:,.0f}' for v in values)}) | {base[checkout]:,.0f} | 1.00 |")
    if bare:
        first = args.checkouts[0]
        print(f"| the actor's env groups stepped bare, alternately, {first} ({' / '.join(f'{v:,.0f}' for v in bare)}) | "
              f"{statistics.median(bare):,.0f} | {statistics.median(bare) / base[first]:.2f} |")
    for checkout, values in pipeline.items():
        print(f"| pipeline, {checkout} ({' / '.join(f'{v:,.0f}' for v in values)}) | {statistics.median(values):,.0f} | "
              f"{statistics.median(values) / base[checkout]:.2f} (of its own raw) |")

if __name__ == "__main__":
    main()
