"""bfloat16 autocast (`perf.amp: bf16`) against float32 on this machine's CPU.

    python benchmarks/amp_cpu.py                  # the networks, then whole runs
    python benchmarks/amp_cpu.py --only networks  # or --only runs
    python benchmarks/amp_cpu.py --configs pqn_atari --only runs

Two measurements, float32 and bfloat16 alternated in each:

1. The Atari recipes' networks as a run builds them on a CPU (``make_policy``: channels-last
   convolutions), eager and compiled: observations per second of inference at the acting
   batches (one per env of 8, 32 and 128 envs) and of an update (forward, backward, Adam) at
   the learners' batches (PAAC's 32 envs x 5 steps = 160, PPO's minibatch of 256). Each
   cell is timed by the GPU check's own ``cnn_throughput``, whose update is an actor-critic's:
   PQN's and QR-DQN's Q-networks have whole runs only.
2. Whole runs, ``parallel-rl launch --config C --steps N`` against the same with
   ``--set perf.amp=bf16``, in alternation (compiled where ``perf.compile: auto`` compiles a
   run of 1M steps: PPO and PQN, not PAAC or QR-DQN; QR-DQN learns from its 1,024th step): steady agent steps/s as ``peer_ppo.py`` reads it.

oneDNN computes bfloat16 convolutions and matrix products with the CPU's own bf16 instructions
(AVX512_BF16, AMX) where it has them, and emulates them where it does not (slower than
float32): the first line printed says which this CPU is. The two settings take turns in the
order float32, bf16 in odd rounds and bf16, float32 in even ones, so drift lands on both.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import cnn_throughput  # noqa: E402
from peer_ppo import run_ours  # noqa: E402
from transport_ab import turn_order  # noqa: E402

from parallel_rl.algos import make_policy, native_bf16  # noqa: E402
from parallel_rl.config import build_config  # noqa: E402
from parallel_rl.envs import EnvSpec  # noqa: E402

ACTING_BATCHES = (8, 32, 128)
UPDATE_BATCHES = {"ppo_atari": 256, "paac_atari": 160}
RUN_STEPS = {"ppo_atari": 20_480, "paac_atari": 60_000, "pqn_atari": 40_960, "qrdqn_atari": 8_192}
CONFIGS = tuple(RUN_STEPS)
# what perf.compile: auto does in a run of 1M agent steps or more (these runs are shorter)
RUN_COMPILE = {"ppo_atari": "true", "paac_atari": "false", "pqn_atari": "true", "qrdqn_atari": "false"}
# QR-DQN learns from its first 1,024 steps rather than 20k, so the steady speed is the learner's, in a
# replay small enough that allocating it is not most of a short run
RUN_OVERRIDES = {"qrdqn_atari": ("algo.warmup_steps=1024", "replay.capacity=100000")}


def network_cells(config: str, compiled: bool, seconds: float, rounds: int) -> list[dict]:
    spec = EnvSpec("Pong-v5", "synthetic", (4, 84, 84), np.dtype(np.uint8), gym.spaces.Discrete(6), True)
    cfg = build_config(config, {"device": "cpu", "perf.compile": False})
    cpu = torch.device("cpu")
    rows = []
    for batch in (*ACTING_BATCHES, UPDATE_BATCHES[config]):
        figures: dict[str, list[dict]] = {"float32": [], "bf16": []}
        for round_ in range(rounds):
            for amp in turn_order(["float32", "bf16"], round_):
                variant = ("compile" if compiled else "eager") + ("_bf16" if amp == "bf16" else "")
                torch.manual_seed(0)
                net = make_policy(spec, replace(cfg, perf=replace(cfg.perf, amp="off")), cpu).net
                figures[amp].append(cnn_throughput(net, variant, batch, seconds, cpu))
        kind = "update_obs_per_s" if batch == UPDATE_BATCHES[config] else "inference_obs_per_s"
        f32, b16 = (statistics.median(cell[kind] for cell in figures[amp]) for amp in ("float32", "bf16"))
        rows.append({"config": config, "compiled": compiled, "what": kind.split("_")[0], "batch": batch,
                     "float32": f32, "bf16": b16, "ratio": b16 / f32})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="per network cell")
    parser.add_argument("--rounds", type=int, default=3, help="alternations per network cell, and whole runs per setting")
    parser.add_argument("--only", choices=("networks", "runs"), help="one of the two measurements")
    parser.add_argument("--eager-only", action="store_true", help="network cells without the compiled ones")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=CONFIGS, help="the recipes measured")
    args = parser.parse_args()
    if args.rounds < 1 or not args.seconds > 0:
        parser.error(f"--rounds must be at least 1 and --seconds positive, not {args.rounds} and {args.seconds}")
    if args.only == "networks" and not set(args.configs) & set(UPDATE_BATCHES):
        parser.error(f"--only networks times actor-critic networks ({', '.join(UPDATE_BATCHES)}); --configs "
                     f"{' '.join(args.configs)} has none of them: add one, or measure whole runs (--only runs)")
    native = native_bf16(torch.device("cpu"))
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, bf16 units (AVX512_BF16 or AMX): {native}, "
          f"torch threads {torch.get_num_threads()}\n", flush=True)
    if args.only != "runs":
        network_table(args.configs, args.seconds, args.rounds, (False,) if args.eager_only else (False, True))
    if args.only != "networks":
        run_table(args.configs, args.rounds)


def network_table(configs: list[str], seconds: float, rounds: int, compiled_too: tuple[bool, ...]) -> None:
    print("| network | compiled | measured | batch | float32 obs/s | bf16 obs/s | bf16 / float32 |")
    print("|---|---|---|---:|---:|---:|---:|")
    for config in (config for config in configs if config in UPDATE_BATCHES):
        for compiled in compiled_too:
            for row in network_cells(config, compiled, seconds, rounds):
                print(f"| {row['config']} | {'yes' if compiled else 'no'} | {row['what']} | {row['batch']} | "
                      f"{row['float32']:,.0f} | {row['bf16']:,.0f} | {row['ratio']:.2f} |", flush=True)


def run_table(configs: list[str], rounds: int) -> None:
    print(f"\n| run | float32 steady agent steps/s (medians of {rounds}) | bf16 | bf16 / float32 |")
    print("|---|---:|---:|---:|")
    for config in configs:
        runs: dict[str, list[float]] = {"off": [], "bf16": []}
        for round_ in range(rounds):
            for amp in turn_order(["off", "bf16"], round_):
                overrides = ["--set", f"perf.amp={amp}", "--set", f"perf.compile={RUN_COMPILE[config]}"]
                overrides += [arg for setting in RUN_OVERRIDES.get(config, ()) for arg in ("--set", setting)]
                runs[amp].append(run_ours(RUN_STEPS[config], overrides, config=config)[1])
        f32, b16 = statistics.median(runs["off"]), statistics.median(runs["bf16"])
        extra = "".join(f" --set {setting}" for setting in RUN_OVERRIDES.get(config, ()))
        print(f"| `parallel-rl launch --config {config} --steps {RUN_STEPS[config]} --set perf.compile={RUN_COMPILE[config]}{extra}` "
              f"({' / '.join(f'{x:,.0f}' for x in runs['off'])} against {' / '.join(f'{x:,.0f}' for x in runs['bf16'])}) "
              f"| {f32:,.0f} | {b16:,.0f} | {b16 / f32:.2f} |", flush=True)


if __name__ == "__main__":
    main()
