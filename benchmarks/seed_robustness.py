"""Seed x CPU-kernel table for the recipes the learning tests use.

A seeded trajectory is not portable across CPUs: MKL and oneDNN pick different kernels on
AVX-512 and AVX2 machines, the floats differ in their last bits and the runs diverge. A
learning test is only as good as its recipe's robustness, so every recipe a test uses must
reach its threshold on every seed under both the machine's own kernels and the closest
emulation of an AVX2-only CPU. This script runs that grid, each cell a fresh process, and
prints the table (final recent return, steps, seconds) for docs/benchmarks.md:

    python benchmarks/seed_robustness.py                      # every case x 5 seeds x 2 kernels
    python benchmarks/seed_robustness.py --cases ppo_classic --seeds 1 2 --set algo.update_epochs=10

The score is the mean training return of the last logging.return_window episodes, or the
greedy evaluation return for the cases whose test evaluates greedily.

Exit status 1 when any cell misses its threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

# What an AVX2-only CPU (e.g. an AMD EPYC before Zen 4) runs, emulated on an AVX-512 one.
AVX2_EMULATION = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# MKL's vendor-neutral code path and ATen's scalar kernels: a third trajectory on any x86 CPU.
# On an AMD CPU MKL takes its AVX2 path whatever the machine has, so there `avx2` often
# reproduces `default` bit for bit, and this column is what shows a recipe off its one trajectory.
SCALAR = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default"}
KERNELS = {"default": {}, "avx2": AVX2_EMULATION, "scalar": SCALAR}


@dataclass(frozen=True)
class Case:
    """What one learning test runs and asserts: a recipe, its overrides, and the threshold
    of the recent training return (or of the greedy evaluation return when ``greedy_episodes``)."""

    recipe: str
    threshold: float
    overrides: tuple[str, ...] = ()
    greedy_episodes: int = 0


CASES = {  # name -> the learning test that asserts it
    "paac_classic": Case("paac_classic", 450.0),  # tests/test_learning.py
    "ppo_classic": Case("ppo_classic", 450.0),
    "pqn_classic": Case("pqn_classic", 450.0),
    "qrdqn_classic": Case("qrdqn_classic", 400.0),  # tests/test_qrdqn.py
    "simbav2_pendulum": Case("simbav2_pendulum", -250.0),  # tests/test_sac.py
    "impala_2procs": Case("paac_classic", 450.0, ("actors.procs=2", "algo.name=impala", "actors.num_envs=16", "optim.lr=0.001",
                                                  "algo.entropy_coef=0.01", "total_steps=400000")),  # tests/test_pipeline.py
    "pqn_toytext": Case("pqn_toytext", -15.0, greedy_episodes=1),  # tests/test_learning.py: CliffWalking, greedy
    # benchmarks/cartpole_solve.py's definition of solved: 20 greedy evaluation episodes averaging 475
    "paac_classic_solved": Case("paac_classic", 475.0, greedy_episodes=20),
}

WORKER = """
import json, sys
from parallel_rl.config import build_config
from parallel_rl.evaluate import evaluate
from parallel_rl.runtime.runner import Runner
recipe, seed, run_dir, greedy_episodes, *overrides = sys.argv[1:]
cfg = build_config(recipe, {"seed": int(seed)}, ["logging.console=false", *overrides])
s = Runner(cfg, run_dir).run()
out = {"recent_return": s.recent_return, "final_step": s.final_step, "episodes": s.episodes}
if int(greedy_episodes):
    returns = evaluate(s.checkpoint, int(greedy_episodes), greedy=True).returns
    out["greedy_return"] = sum(returns) / len(returns)
print(json.dumps(out))
"""


def run_cell(name: str, seed: int, kernel: str, overrides: list[str]) -> dict:
    case = CASES[name]
    env = {k: v for k, v in os.environ.items() if k not in {**AVX2_EMULATION, **SCALAR}}
    env.update(KERNELS[kernel])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", WORKER, case.recipe, str(seed), str(Path(tmp) / "run"),
                              str(case.greedy_episodes), *case.overrides, *overrides],
                             capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{name} seed {seed} ({kernel}) failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    score = result["greedy_return"] if case.greedy_episodes else result["recent_return"]
    return {"case": name, "seed": seed, "kernel": kernel, "seconds": seconds, "score": score,
            "threshold": case.threshold, **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=["default", "avx2"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override applied to every cell (to try a retuned recipe)")
    parser.add_argument("--parallel", type=int, default=2, help="cells run at once (default 2: the recipes use 1 torch thread)")
    parser.add_argument("--json", metavar="FILE", help="also write the cells as JSON")
    args = parser.parse_args()

    cells = [(c, s, k) for c in args.cases for s in args.seeds for k in args.kernels]
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(run_cell, *c, args.overrides) for c in cells]
        for future in as_completed(futures):  # progress, in completion order
            r = future.result()
            print(f"{r['case']} seed {r['seed']} {r['kernel']}: {r['score']:.1f} in {r['seconds']:.0f} s", file=sys.stderr, flush=True)
        results = [f.result() for f in futures]

    print(f"{len(cells)} runs, {args.parallel} at a time; overrides: {' '.join(args.overrides) or 'none'}\n")
    print("| case | seed | kernels | score | threshold | steps | seconds |")
    print("|---|---:|---|---:|---:|---:|---:|")
    missed = 0
    for r in results:
        ok = r["score"] >= r["threshold"]
        missed += not ok
        print(f"| {r['case']} | {r['seed']} | {r['kernel']} | {r['score']:.1f}{'' if ok else ' **miss**'} | "
              f"{r['threshold']:g} | {r['final_step']:,} | {r['seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\n{len(results) - missed} of {len(results)} cells at or above their threshold")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
