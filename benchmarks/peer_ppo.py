"""PPO on Pong-v5 side by side with CleanRL's single-file `ppo_atari_envpool.py` (the peer in
../shared/peers, never copied here): the same settings (8 envs x 128 steps, 4 epochs x 4
minibatches), whole processes timed in alternation on the same machine.

    pip install tyro   # the peer's only extra dependency
    python benchmarks/peer_ppo.py --peer ../shared/peers/cleanrl_ppo_atari_envpool.py --steps 20480 --repeats 2
    python benchmarks/peer_ppo.py --set perf.compile=true --variant "" --variant "perf.amp=off"

Prints, per contender, the median wall-clock of the whole process and the median agent
steps/s over the steady part (agent steps between the first and last progress report over
the seconds between them), then the ratio ours / peer. The peer reports, after each
iteration k, ``k x 1024 / (seconds since its reset)``: each report gives the time at which
it was printed, and its steady rate is taken between the first and the last report as ours
is (its own last figure would count its first iteration and reset too). ``--set`` applies to every run of
ours; each ``--variant`` (space-separated KEY=VALUE overrides on top, "" for none) is a
contender of its own. Within each repeat every contender runs once, and each repeat starts one
contender later than the one before, so drift of a shared machine lands on all of them.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transport_ab import turn_order  # beside this script

PEER_SPS = re.compile(r"SPS:\s*(\d+)")
OURS_STEP = re.compile(r"^step\s+([\d.]+)([kM]?)/")
PEER_ENVS, PEER_ROLLOUT = 8, 128  # ppo_atari's settings, given to the peer explicitly


def peer_steady_sps(reports: list[int]) -> float:
    """Agent steps/s between the peer's first and last report: report k (from 1) is
    ``k x PEER_ENVS x PEER_ROLLOUT / t_k``, t_k the seconds from its reset to the report."""
    if len(reports) < 2:
        return float("nan")
    per_iteration = PEER_ENVS * PEER_ROLLOUT
    times = [(k + 1) * per_iteration / sps for k, sps in enumerate(reports)]
    return (len(reports) - 1) * per_iteration / (times[-1] - times[0])


def run_peer(peer: Path, steps: int) -> tuple[float, float]:
    # in a folder of its own: the peer writes TensorBoard files under ./runs even with --no-track
    with tempfile.TemporaryDirectory(prefix="peer-ppo-") as cwd:
        began = time.perf_counter()
        out = subprocess.run([sys.executable, str(peer.resolve()), "--env-id", "Pong-v5", "--total-timesteps", str(steps),
                              "--num-envs", str(PEER_ENVS), "--num-steps", str(PEER_ROLLOUT), "--no-track"],
                             capture_output=True, text=True, cwd=cwd)
        wall = time.perf_counter() - began
    if out.returncode:
        raise SystemExit(f"the peer {peer} exited with {out.returncode}:\n{out.stderr.strip()[-3000:]}")
    return wall, peer_steady_sps([int(m) for m in PEER_SPS.findall(out.stdout + out.stderr)])


def run_ours(steps: int, extra: list[str], config: str = "ppo_atari") -> tuple[float, float]:
    """(wall-clock of the whole process, steady agent steps/s) of ``parallel-rl launch --config config``."""
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "parallel_rl", "launch", "--config", config, "--steps", str(steps),
                                 "--run-dir", f"{tmp}/run", "--set", "logging.interval_s=1", *extra],
                                stdout=subprocess.PIPE, text=True)
        seen: list[tuple[float, float]] = []
        for line in proc.stdout:
            if m := OURS_STEP.match(line):
                value = float(m.group(1)) * {"": 1, "k": 1e3, "M": 1e6}[m.group(2)]
                seen.append((time.perf_counter(), value))
        proc.wait()
        wall = time.perf_counter() - began
    if proc.returncode:
        raise SystemExit(f"parallel-rl exited with {proc.returncode}")
    steady = (seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0]) if len(seen) > 1 else float("nan")
    return wall, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", type=Path, default=Path("../shared/peers/cleanrl_ppo_atari_envpool.py"))
    parser.add_argument("--steps", type=int, default=20_480)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides for our run (e.g. actors.procs=1)")
    parser.add_argument("--variant", dest="variants", action="append", default=None, metavar='"KEY=VALUE ..."',
                        help="a contender of ours: overrides on top of --set (repeatable; default: one, with none)")
    args = parser.parse_args()
    if args.repeats < 1 or args.steps < 2 * PEER_ENVS * PEER_ROLLOUT:
        parser.error(f"--repeats {args.repeats} --steps {args.steps}: give 1 or more repeats and at least "
                     f"{2 * PEER_ENVS * PEER_ROLLOUT} steps (two of the peer's iterations, for a steady rate)")
    if not args.peer.is_file():
        parser.error(f"--peer {args.peer}: no such file; give the peer's script (CleanRL's ppo_atari_envpool.py)")
    if args.variants is not None and len({" ".join(v.split()) for v in args.variants}) < len(args.variants):
        parser.error(f"--variant given twice with the same overrides: {args.variants}")
    shared = [f for o in args.overrides for f in ("--set", o)]
    variants = {f"parallel-rl ppo_atari{', ' + ', '.join(v.split()) if v.split() else ''}": v.split()
                for v in (args.variants or [""])}
    peer_name = "CleanRL ppo_atari_envpool.py"
    results: dict[str, list[tuple[float, float]]] = {peer_name: [], **{name: [] for name in variants}}
    contenders = [peer_name, *variants]
    for i in range(args.repeats):  # alternate, each repeat starting one contender later, so drift lands on all
        for name in turn_order(contenders, i):
            if name == peer_name:
                results[name].append(run_peer(args.peer, args.steps))
            else:
                results[name].append(run_ours(args.steps, shared + [f for o in variants[name] for f in ("--set", o)]))
        print(f"repeat {i + 1}/{args.repeats} done", flush=True)
    print(f"\nPong-v5, {args.steps:,} agent steps each, medians of {args.repeats} alternating runs\n")
    print("| contender | steady agent steps/s | wall-clock (whole process) |")
    print("|---|---:|---:|")
    medians = {}
    for name, runs in results.items():
        wall, sps = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        medians[name] = (wall, sps)
        print(f"| {name} | {sps:,.0f} | {wall:.1f} s |")
    peer_wall, peer_sps = medians.pop(peer_name)
    print()
    for name, (our_wall, our_sps) in medians.items():
        print(f"{name} / peer: {our_sps / peer_sps:.2f}x steady agent steps/s, {peer_wall / our_wall:.2f}x wall-clock speed")


if __name__ == "__main__":
    main()
