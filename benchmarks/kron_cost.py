#!/usr/bin/env python3
"""The cost of the Kron optimizer against Adam, per PPO update, on the same network.

    python benchmarks/kron_cost.py                      # the figures in docs/benchmarks.md
    python benchmarks/kron_cost.py --width 1536 --depth 5 --seconds 10 --repeats 3

Builds PPO from configs/ppo_atari_stable.yaml (Nature CNN with LayerNorm, multi-skip
torso) for Pong-v5's observations twice, once with Adam and once with Kron, and times
whole ``update()`` calls on one fixed synthetic rollout (8 envs x 128 steps of random
frames, 4 epochs x 4 minibatches = 16 optimizer steps an update). Everything else an
update does (forward, backward, GAE, clipping) is identical, so the difference is the
optimizer's. Repeats are interleaved (adam, kron, adam, ...) and reduced to medians.
Prints a Markdown section.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from parallel_rl.algos.ppo import PPO
from parallel_rl.config import build_config
from parallel_rl.contracts import Batch
from parallel_rl.envs import env_spec
from parallel_rl.runtime.runner import resolve_device

RECIPE = "ppo_atari_stable"


def synthetic_rollout(spec, horizon: int, num_envs: int, device: torch.device) -> Batch:
    """A fixed rollout of random frames: the optimizer's cost does not depend on their content."""
    g = torch.Generator().manual_seed(0)
    flags = torch.zeros(horizon, num_envs, dtype=torch.bool)
    return Batch.from_arrays({
        "obs": torch.randint(0, 256, (horizon, num_envs, *spec.obs_shape), generator=g, dtype=torch.uint8),
        "actions": torch.randint(0, spec.num_actions, (horizon, num_envs), generator=g),
        "behaviour_log_probs": torch.full((horizon, num_envs), -float(torch.tensor(float(spec.num_actions)).log())),
        "behaviour_values": torch.zeros(horizon, num_envs),
        "rewards": torch.randn(horizon, num_envs, generator=g).sign(),
        "terminated": flags, "truncated": flags, "autoreset": flags,
        "next_obs": torch.randint(0, 256, (num_envs, *spec.obs_shape), generator=g, dtype=torch.uint8),
    }, device)


def seconds_per_update(algo: PPO, batch: Batch, seconds: float) -> float:
    algo.update(batch)  # warm-up: optimizer state allocated, kernels chosen
    sync = torch.cuda.synchronize if algo.device.type == "cuda" else (lambda: None)
    sync()
    updates, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        algo.update(batch)
        updates += 1
    sync()
    return (time.perf_counter() - start) / updates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=512, help="torso width (default 512, the paper's smallest)")
    parser.add_argument("--depth", type=int, default=1, help="residual blocks (default 1)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement (default 10)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--device", default="cpu", help="learner device (default cpu)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.repeats < 1 or args.width < 1 or args.depth < 1:
        print("kron_cost.py: error: --seconds must be positive; --repeats, --width and --depth at least 1.", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    device = resolve_device(args.device)
    optimizers = ("adam", "kron")
    algos, batch = {}, None
    for name in optimizers:
        cfg = build_config(RECIPE, {"device": args.device}, [f"optim.name={name}", f"model.width={args.width}",
                                                             f"model.depth={args.depth}", "logging.diag_interval=0"])
        torch.manual_seed(0)
        spec = env_spec(cfg.env)
        algos[name] = PPO(spec, cfg, device)
        batch = batch or synthetic_rollout(spec, cfg.algo.rollout_length, cfg.actors.num_envs, device)
    cfg = algos["adam"].cfg
    steps = cfg.algo.update_epochs * cfg.algo.num_minibatches
    params = sum(p.numel() for p in algos["adam"].net.parameters())
    print(f"## Kron vs Adam per PPO update ({RECIPE}, width {args.width}, {args.depth} blocks)\n\n"
          f"{cores} cores, torch {torch.__version__}, device {device}, {params / 1e6:.2f}M parameters; one update = "
          f"{steps} optimizer steps on {cfg.actors.num_envs} x {cfg.algo.rollout_length} Pong-v5 frames; medians of "
          f"{args.repeats} interleaved {args.seconds:.0f}-s repeats.\n", flush=True)
    timings: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(args.repeats):
        for name in optimizers:
            timings[name].append(seconds_per_update(algos[name], batch, args.seconds))
    adam = statistics.median(timings["adam"])
    print("| optimizer | s per update | ms per optimizer step | relative to Adam | repeats (s) |\n|---|---:|---:|---:|---|")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {1000 * median / steps:.1f} | {median / adam:.2f} | "
              f"{', '.join(f'{v:.3f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
