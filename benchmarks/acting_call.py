"""One acting call, as the collector makes it, timed for one or two checkouts side by side.

    python benchmarks/acting_call.py OLD_CHECKOUT NEW_CHECKOUT --rounds 3
    python benchmarks/acting_call.py . --recipe ppo_atari --recipe paac_classic

The call is ``runtime.rollout.NetworkPolicy``'s: the observations of one env group into a
tensor, the acting streams' draws, the policy's forward pass and its actions, log-probabilities
and values back as numpy, on the CPU with one torch thread (an actor's). Each recipe's policy
is built as its run builds it, eager (a run shorter than 1M steps does not compile), with
seeded random weights, and acts on random observations of its env's shape. The transport
probe's uniformly random policy (``bench``'s pipeline) acts for 128 envs, one of the two env
groups of a 256-env actor process; each recipe's network acts for its own envs, one group, as
it does inline on a CPU.

Each figure is the median of ``--calls`` calls after a warm-up, in a fresh process per
checkout and round; the checkouts take turns within a round, in reversed order every other round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transport_ab import add_checkouts_argument, in_checkout, refuse_bad_checkouts, turn_order  # noqa: E402

from parallel_rl.config import recipe_names  # noqa: E402

RECIPES = ["transport_probe", *recipe_names()]

MEASURE = """
import json, sys, time
from dataclasses import replace
import numpy as np, torch
from parallel_rl.config import build_config
from parallel_rl.envs import env_spec
from parallel_rl.runtime.rollout import NetworkPolicy
torch.set_num_threads(1)
recipe, calls = sys.argv[1], int(sys.argv[2])
cpu = torch.device("cpu")
if recipe == "transport_probe":
    from parallel_rl.algos.policies import UniformPolicy
    spec, envs = env_spec(build_config("paac_atari", {}, []).env), 128
    policy = UniformPolicy(spec)
else:
    from parallel_rl.algos import make_algorithm
    cfg = build_config(recipe, {}, [])
    cfg = replace(cfg, perf=replace(cfg.perf, compile=False, cuda_graphs=False))
    spec, envs = env_spec(cfg.env), cfg.actors.num_envs
    torch.manual_seed(0)
    policy = make_algorithm(spec, cfg, cpu).policy()
act = NetworkPolicy(policy, cpu, 1, envs)
rng = np.random.default_rng(0)
obs = (rng.integers(0, 256, size=(envs, *spec.obs_shape)) if spec.obs_dtype == np.uint8
       else rng.standard_normal((envs, *spec.obs_shape))).astype(spec.obs_dtype)
for _ in range(max(20, calls // 10)):
    act(obs, slice(0, envs))
seconds = []
for _ in range(calls):
    began = time.perf_counter()
    act(obs, slice(0, envs))
    seconds.append(time.perf_counter() - began)
print(json.dumps({"ms": 1e3 * float(np.median(seconds)), "envs": envs}))
"""


def measure(checkout: str, recipe: str, calls: int) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, recipe, str(calls)], capture_output=True, text=True,
                          **in_checkout(checkout))
    if done.returncode:
        sys.exit(f"timing {recipe} with {checkout} failed (exit code {done.returncode}):\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkouts_argument(parser)
    parser.add_argument("--recipe", action="append", default=[], choices=RECIPES,
                        help="a recipe whose policy acts, or transport_probe (default: transport_probe, ppo_atari, "
                             "paac_atari, paac_classic)")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    refuse_bad_checkouts(parser, args.checkouts)
    if args.rounds < 1 or args.calls < 1:
        parser.error(f"--rounds ({args.rounds}) and --calls ({args.calls}) must be 1 or more")
    recipes = args.recipe or ["transport_probe", "ppo_atari", "paac_atari", "paac_classic"]
    figures: dict[tuple[str, str], list[float]] = {(r, c): [] for r in recipes for c in args.checkouts}
    envs: dict[str, int] = {}
    for round_ in range(args.rounds):
        for recipe in recipes:
            for checkout in turn_order(args.checkouts, round_):
                timed = measure(checkout, recipe, args.calls)
                figures[recipe, checkout].append(timed["ms"])
                envs[recipe] = timed["envs"]
        print(f"round {round_ + 1}: " + ", ".join(f"{r} {c} {v[-1]:.3f} ms" for (r, c), v in figures.items()), flush=True)
    header = " | ".join(f"{c} (ms, median of {args.rounds})" for c in args.checkouts)
    print(f"\n| policy | envs | {header} |" + (" ratio |" if len(args.checkouts) == 2 else ""))
    print("|---|---:|" + "---:|" * (len(args.checkouts) + (len(args.checkouts) == 2)))
    for recipe in recipes:
        medians = [statistics.median(figures[recipe, c]) for c in args.checkouts]
        ratio = f" {medians[0] / medians[1]:.2f}x |" if len(medians) == 2 else ""
        print(f"| {recipe} | {envs[recipe]} | " + " | ".join(f"{m:.3f}" for m in medians) + f" |{ratio}")


if __name__ == "__main__":
    main()
