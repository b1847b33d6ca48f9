"""Replay a resumed stretch of a run and record what every update in a window did.

    python benchmarks/replay_updates.py RUN_DIR --steps 4310000 --seed 101 \
        --record-from 4270000 --record-to 4310000 --out records.json
    # the same stretch, clipping the gradient's norm at 0.1 from step 4,280,000 on
    python benchmarks/replay_updates.py RUN_DIR ... --clip-from 4280000 --clip-to 0.1
    # a placebo: every weight scaled by (1 + 1e-6) once, at step 4,282,720
    python benchmarks/replay_updates.py RUN_DIR ... --perturb-at 4282720

RUN_DIR is a copy of a run directory holding the checkpoint to start from (it is resumed
and written to, so keep the original). An inline run (K = 0) resumed from one checkpoint
with the same env seed, code and machine takes the same float trajectory every time, so
a run that went wrong once can be replayed and looked at update by update, or changed
from one step on and compared with its own undisturbed replay.

For every update whose step is in the window (actor-critic algorithms: PAAC, IMPALA, PPO),
the record holds: the step; the batch's
mean value before and after the update (the network run again on the batch's
observations, under no_grad, which changes nothing the run computes); the batch's reward
sum and episode ends; the update's own losses and gradient norms; and per parameter
tensor, the step's norm, its norm relative to the weights, its largest element, and
RMSProp's or Adam's root mean square of the gradient (median and minimum), where the
optimizer keeps one. The run itself logs to RUN_DIR/tb as usual.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from parallel_rl import checkpoint as ckpt
from parallel_rl.algos import make_algorithm
from parallel_rl.runtime.runner import Runner


def record_of(algo, batch, names, before, value_before, value_after, result, step) -> dict:
    layers = {}
    for name, param, old in zip(names, algo.net.parameters(), before, strict=True):
        change = param.detach() - old
        state = algo.optimizer.state.get(param, {})
        mean_square = state.get("square_avg", state.get("exp_avg_sq"))
        layers[name] = {
            "step_norm": change.norm().item(),
            "rel": (change.norm() / old.norm().clamp(min=1e-12)).item(),
            "max_abs": change.abs().max().item(),
            "rms_med": mean_square.sqrt().median().item() if mean_square is not None else None,
            "rms_min": mean_square.sqrt().min().item() if mean_square is not None else None,
        }
    return {
        "step": step, "v_before": value_before, "v_after": value_after,
        "reward_sum": float(batch.rewards.sum()), "ends": int((batch.terminated | batch.truncated).sum()),
        **{tag: float(value) for tag, value in result.metrics.items() if tag.startswith(("losses/", "diag/grad_norm", "diag/value_mean"))},
        "layers": layers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, required=True, help="agent steps to run to")
    parser.add_argument("--seed", type=int, help="the env seed of the resumed stretch (as launch --seed)")
    parser.add_argument("--record-from", type=float, required=True)
    parser.add_argument("--record-to", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the records")
    parser.add_argument("--clip-from", type=float, help="from this step on, clip the gradient's global norm at --clip-to")
    parser.add_argument("--clip-to", type=float)
    parser.add_argument("--perturb-at", type=float, help="at this step, scale every weight by (1 + 1e-6) once")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if (args.clip_from is None) != (args.clip_to is None):
        parser.error("--clip-from and --clip-to go together")
    changes = {"total_steps": args.steps, **({"seed": args.seed} if args.seed is not None else {})}
    resumption = ckpt.resume(args.run_dir, changes, ["checkpoint.interval_steps=0", *args.set])
    records: list[dict] = []
    progress = {"step": resumption.step, "perturbed": False}

    def build(spec, cfg, device):
        algo = make_algorithm(spec, cfg, device)
        update = algo.update
        names = [name for name, _ in algo.net.named_parameters()]

        def replayed(batch):
            progress["step"] += batch.num_steps
            step = progress["step"]
            if args.perturb_at is not None and step >= args.perturb_at and not progress["perturbed"]:
                with torch.no_grad():
                    for param in algo.net.parameters():
                        param.mul_(1 + 1e-6)
                progress["perturbed"] = True
            if args.clip_from is not None and step >= args.clip_from and algo.cfg.algo.max_grad_norm != args.clip_to:
                algo.cfg = dataclasses.replace(algo.cfg, algo=dataclasses.replace(algo.cfg.algo, max_grad_norm=args.clip_to))
            if not args.record_from <= step <= args.record_to:
                return update(batch)
            obs = torch.cat([batch.obs.flatten(0, 1), batch.next_obs], dim=0)
            before = [param.detach().clone() for param in algo.net.parameters()]
            with torch.no_grad():
                value_before = algo.net(obs)[1][: batch.num_steps].mean().item()
            result = update(batch)
            with torch.no_grad():
                value_after = algo.net(obs)[1][: batch.num_steps].mean().item()
            records.append(record_of(algo, batch, names, before, value_before, value_after, result, step))
            return result

        algo.update = replayed
        return algo

    try:
        Runner(resumption.config, resumption.run_dir, resumption=resumption, algorithm=build).run()
    finally:
        args.out.write_text(json.dumps(records))
        print(f"{len(records)} updates recorded in {args.out}")


if __name__ == "__main__":
    main()
