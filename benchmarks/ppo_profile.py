"""Where each millisecond of a PPO iteration goes, ours and CleanRL's single-file PPO (the peer
in ../shared/peers, run as it is, never copied here), measured the same way in both.

    pip install tyro   # the peer's only extra dependency
    python benchmarks/ppo_profile.py --peer ../shared/peers/cleanrl_ppo_atari_envpool.py --steps 10240

Each contender runs in its own process (ours inline, `--actor-procs 0`, so that every stage
is in the one process being timed), with the same instrumentation installed from outside
through public hooks only:
- env:            EnvPool's `step`/`send`/`recv` (the classes `envpool.make` returns);
- act forward:    the outermost `nn.Module` call on the 8 envs' observations with autograd off;
- update forward: the outermost `nn.Module` call while autograd is on (the loss's forward);
- backward:       `torch.autograd.backward`;
- optimizer:      between torch's global optimizer step pre- and post-hooks;
- other forward:  any other outermost `nn.Module` call with autograd off (bootstrap values,
                  diagnostics);
- other:          the rest of the wall-clock from the first env step to the last optimizer
                  step (returns and advantages, sampling, the loss's arithmetic, clipping,
                  logging, the interpreter).

The second table is the ceiling: the network's own arithmetic at the run's shapes (128
acting forwards at batch 8, then 4 epochs x 4 minibatches of 256 forward, backward and an
Adam step), timed alone in a loop with nothing else running. No PPO on this network, in any
program, can run faster than 1,024 agent steps per that time with these kernels; the table
divides it by the peer's measured time per iteration to show the best ratio reachable.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("env", "act forward", "update forward", "backward", "optimizer", "other forward")
ENVS, STEPS_PER_ENV, EPOCHS, MINIBATCHES = 8, 128, 4, 4


class StageClock:
    """Accumulates seconds per stage; `span` is first env call to last optimizer step."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.first: float | None = None
        self.last = 0.0
        self.optimizer_steps = 0

    def add(self, stage: str, began: float) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - began
        if self.first is None:
            self.first = began
        if stage == "optimizer":
            self.last, self.optimizer_steps = now, self.optimizer_steps + 1

    def report(self) -> dict:
        span = self.last - (self.first or self.last)
        return {"span_s": span, "optimizer_steps": self.optimizer_steps, "stages_s": self.seconds,
                "other_s": span - sum(self.seconds.values())}


def install(clock: StageClock) -> None:
    import envpool
    import torch
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    def timed(method, stage: str):
        def call(*args, **kwargs):
            began = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                clock.add(stage, began)
        return call

    patched: set[type] = set()
    make = envpool.make

    def timed_make(*args, **kwargs):
        env = make(*args, **kwargs)
        kind = type(env)  # EnvPool's classes, patched once each: a proxy would fail gymnasium's isinstance checks
        if kind not in patched:
            for name in ("step", "send", "recv"):
                setattr(kind, name, timed(getattr(kind, name), "env"))
            patched.add(kind)
        return env

    envpool.make = timed_make

    depth = [0]
    started: list[float] = []

    def before(module, args):
        if depth[0] == 0:
            started.append(time.perf_counter())
        depth[0] += 1

    def after(module, args, output):
        depth[0] -= 1
        if depth[0] == 0:
            acting = not torch.is_grad_enabled() and bool(args) and getattr(args[0], "shape", (0,))[:1] == (ENVS,)
            clock.add("update forward" if torch.is_grad_enabled() else "act forward" if acting else "other forward",
                      started.pop())

    torch.nn.modules.module.register_module_forward_pre_hook(before)
    torch.nn.modules.module.register_module_forward_hook(after)

    torch.autograd.backward = timed(torch.autograd.backward, "backward")

    step_began: list[float] = []
    register_optimizer_step_pre_hook(lambda opt, args, kwargs: step_began.append(time.perf_counter()))
    register_optimizer_step_post_hook(lambda opt, args, kwargs: clock.add("optimizer", step_began.pop()))


def child(which: str, peer: Path, steps: int, out: Path, overrides: list[str]) -> None:
    clock = StageClock()
    install(clock)
    try:
        if which == "peer":
            sys.argv = [str(peer), "--env-id", "Pong-v5", "--total-timesteps", str(steps), "--num-envs", str(ENVS), "--no-track"]
            runpy.run_path(str(peer), run_name="__main__")
        else:
            from parallel_rl.cli import main as cli_main
            with tempfile.TemporaryDirectory() as tmp:
                code = cli_main(["launch", "--config", "ppo_atari", "--actor-procs", "0", "--steps", str(steps),
                                 "--run-dir", f"{tmp}/run", "--set", "perf.amp=off",  # the peer's float32 arithmetic
                                 *[arg for item in overrides for arg in ("--set", item)]])
            if code:
                raise SystemExit(f"parallel-rl exited with {code}")
    finally:
        out.write_text(json.dumps(clock.report()))


def ceiling(repeats: int) -> dict:
    """Seconds per iteration of the network math alone, best of `repeats`."""
    import gymnasium as gym
    import numpy as np
    import torch

    from parallel_rl.algos import make_policy
    from parallel_rl.config import build_config
    from parallel_rl.envs import EnvSpec

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = build_config("ppo_atari", {"device": "cpu", "perf.compile": False, "perf.amp": "off"})  # the eager float32 arithmetic both programs run
    spec = EnvSpec("Pong-v5", "synthetic", (4, 84, 84), np.dtype(np.uint8), gym.spaces.Discrete(6), True)
    agent = make_policy(spec, cfg, torch.device("cpu")).net
    optimizer = torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5)
    acting = torch.randint(0, 255, (ENVS, 4, 84, 84), dtype=torch.uint8)
    batch = torch.randint(0, 255, (ENVS * STEPS_PER_ENV // MINIBATCHES, 4, 84, 84), dtype=torch.uint8)
    best = {"act_s": float("inf"), "update_s": float("inf")}
    for _ in range(repeats):
        began = time.perf_counter()
        with torch.inference_mode():
            for _ in range(STEPS_PER_ENV):
                agent(acting)
        act = time.perf_counter() - began
        began = time.perf_counter()
        for _ in range(EPOCHS * MINIBATCHES):
            logits, value = agent(batch)
            loss = logits.logsumexp(-1).mean() + value.square().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        update = time.perf_counter() - began
        best = {"act_s": min(best["act_s"], act), "update_s": min(best["update_s"], update)}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", type=Path, default=Path("../shared/peers/cleanrl_ppo_atari_envpool.py"))
    parser.add_argument("--steps", type=int, default=10_240)
    parser.add_argument("--ceiling-repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for parallel-rl's run (repeatable)")
    parser.add_argument("--only", choices=("peer", "ours"), help="profile one contender, no ceiling")
    parser.add_argument("--child", choices=("peer", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.peer.resolve(), args.steps, args.child_out, args.overrides)
        return
    if args.only != "ours" and not args.peer.is_file():
        parser.error(f"--peer {args.peer}: no such file; pass the path to CleanRL's ppo_atari_envpool.py (or --only ours)")

    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        for which in [args.only] if args.only else ("peer", "ours"):
            out = Path(tmp) / f"{which}.json"
            # in the temporary folder: the peer writes TensorBoard files under ./runs even with --no-track
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", which, "--peer", str(args.peer.resolve()),
                            "--steps", str(args.steps), "--child-out", str(out), *[f"--set={item}" for item in args.overrides]],
                           check=True, stdout=subprocess.DEVNULL, cwd=tmp)
            reports[which] = json.loads(out.read_text())
    iteration_steps = ENVS * STEPS_PER_ENV
    names = {"peer": "CleanRL", "ours": "parallel-rl"}
    per_iteration = {}
    for which, report in reports.items():
        iterations = report["optimizer_steps"] / (EPOCHS * MINIBATCHES)
        per_iteration[which] = {stage: 1e3 * s / iterations for stage, s in report["stages_s"].items()}
        per_iteration[which]["other"] = 1e3 * report["other_s"] / iterations
        per_iteration[which]["total"] = 1e3 * report["span_s"] / iterations
    print(f"ms per iteration ({iteration_steps} agent steps), from the first env step to the last optimizer step\n")
    print("| stage | " + " | ".join(names[w] for w in per_iteration) + " |")
    print("|---|" + "---:|" * len(per_iteration))
    for stage in (*STAGES, "other", "total"):
        print(f"| {stage} | " + " | ".join(f"{row[stage]:.0f}" for row in per_iteration.values()) + " |")
    print("| agent steps/s | " + " | ".join(f"{iteration_steps / row['total'] * 1e3:.0f}" for row in per_iteration.values()) + " |")
    if len(per_iteration) < 2:
        return

    network = ("act forward", "update forward", "backward", "optimizer")
    fastest = {stage: min(row[stage] for row in per_iteration.values()) for stage in network}
    limit = ceiling(args.ceiling_repeats)
    alone_ms = 1e3 * (limit["act_s"] + limit["update_s"])
    peer_total = per_iteration["peer"]["total"]
    print("\nThe network's arithmetic per iteration, ms:")
    print("| part | the faster of the two runs | alone, best of", args.ceiling_repeats, "|")
    print("|---|---:|---:|")
    print(f"| 128 acting forwards, batch 8 | {fastest['act forward']:.0f} | {1e3 * limit['act_s']:.0f} |")
    update_ms = fastest["update forward"] + fastest["backward"] + fastest["optimizer"]
    print(f"| 16 x (forward, backward, Adam), batch 256 | {update_ms:.0f} | {1e3 * limit['update_s']:.0f} |")
    floor_ms = min(sum(fastest.values()), alone_ms)
    print(f"| sum | {sum(fastest.values()):.0f} | {alone_ms:.0f} |")
    print(f"\nceiling: {iteration_steps / floor_ms * 1e3:.0f} agent steps/s with no time at all for the envs or anything else;"
          f" best reachable ratio to the peer with these kernels: {peer_total / floor_ms:.2f}x")


if __name__ == "__main__":
    main()
