"""Everything a GPU machine must show, in one command (about 6 minutes on 16 cores + 1 GPU):

    python benchmarks/gpu_check.py --out DIR            # on the GPU machine
    python benchmarks/gpu_check.py --smoke --out DIR    # tiny sizes on the CPU (the test suite)

Sections, each timed and recorded even when another fails:
  1. algorithms  -- a few updates of every built-in algorithm on the device, losses finite;
  2. switches    -- `perf.optimizer_kernel: fused`, `perf.amp: bf16`, `perf.compile`,
                    compile+bf16 and `perf.cuda_graphs` against float32 eager with torch's
                    default Adam: one PPO update's losses on the same batch within tolerance,
                    compiling really done, CUDA graphs really recorded; CUDA graphs again
                    with policy lag (PPO's own pass over the batch, whose values the graphs'
                    memory pool must not overwrite) against eager with the same lag;
  3. checkpoint  -- a run written on the device resumes on the CPU with the same step counter;
  4. ppo_8_envs  -- `ppo_atari` as it is, 8 envs x 128 steps, for 15 s: agent steps/s, and again
                    with `perf.cuda_graphs`;
  5. bench       -- `parallel-rl bench` figures on Pong-v5 (raw, pipeline, training) for each
                    layout K tried (the full check: the default's), the fastest named;
  6. nature_cnn  -- inference and update throughput of the Nature CNN actor-critic at batch
                    256/1024/4096: eager, bf16 autocast, torch.compile, CUDA graphs;
  7. ranks       -- the same PPO job on 1 rank and on 2 (and 4 where there are 4 GPUs) through
                    `--nproc-per-node`: NCCL between GPUs (gloo where ranks share one), the
                    steps/s of each and the scaling efficiency per added GPU;
  8. ppo_pong    -- PPO on Pong-v5 with 64 envs for what the budget leaves (at most 3 minutes):
                    the recent mean return reached.
Writes DIR/gpu_check.json and DIR/gpu_check.md. Exit status 1 when a section failed.

The whole check keeps to a wall-clock budget (`--budget-s`, counted from after torch and CUDA
are up; the full check's 340 s, with that start-up, come to about the 6 minutes a lent
machine's session can spare with room for a rerun): a section starts only where the time left
covers what it needs at the least, and the two sections whose length can stretch, nature_cnn
and ppo_pong, take what the others leave. A skipped section is recorded as skipped, with the
time that was left; a section that has started is not cut off.

It runs where EnvPool is absent (Python 3.12 machines): Atari then steps on ALE's vector env
(`env.backend: auto` falls back to it) and the classic tasks on gymnasium. The wheels to
carry to such a machine are listed in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from parallel_rl import checkpoint as ckpt
from parallel_rl.algos import make_algorithm, native_bf16
from parallel_rl.bench import stopped_unless_done
from parallel_rl.cli import null_for_unmeasured
from parallel_rl.config import Config, build_config
from parallel_rl.runtime.runner import Runner


@dataclass(frozen=True)
class Sizes:
    """What differs between the real check and the CPU smoke run."""

    device: str
    algorithm_updates: int  # updates of each algorithm's short run (after a replay's warm-up)
    bench_envs: int
    bench_seconds: float
    bench_layouts: tuple[int, ...]
    cnn_batches: tuple[int, ...]
    cnn_seconds: float
    cnn_most_s: float  # the CNN table's cells past this are skipped even with time to spare
    cnn_variants: tuple[str, ...]
    pong_envs: int
    pong_seconds: float
    ppo_8_envs_seconds: float
    ranks_recipe: str
    ranks_envs: int
    ranks_steps: int
    switches_recipe: str
    switches: tuple[str, ...]
    lagged_switch: str  # checked again with policy lag, where PPO evaluates the batch in a pass of its own
    budget_s: float  # the whole check's wall-clock, from after torch and CUDA are up
    needs_s: dict[str, float]  # each section's least useful wall-clock, start-up included, in the order they run


# The seconds each section needs at the least on the GPU machine, start-up included, from the
# H200 run of 2026-12-04 (ppo_8_envs, not in that run, estimated: two 15-s runs, each
# building 8 ALE envs): a bench layout cost about 98 s there (three phases, each building 256
# ALE envs, about 18 s of it measuring), so the full check benches the default's layout alone
# (K = 4 on 16 cores, 1.19x inline's training speed that day); ranks, 47 s at 60k steps;
# ppo_pong, 16 s of start-up before its run. The budget counts from after torch and CUDA are
# up; 340 s leaves about 20 s of the 6 minutes for that start-up. A section that has started
# is not cut off, so a slower machine can overrun by what its sections overrun their needs.
FULL_NEEDS_S = {"algorithms": 20.0, "switches": 40.0, "checkpoint": 5.0, "ppo_8_envs": 45.0, "bench": 100.0,
                "nature_cnn": 20.0, "ranks": 50.0, "ppo_pong": 50.0}
FULL = Sizes("cuda", 8, 256, 5.0, (-1,), (256, 1024, 4096), 0.5, 45.0,
             ("eager", "bf16", "bf16+channels_last", "compile", "compile+bf16", "cuda_graphs"), 64, 180.0, 15.0,
             "ppo_atari", 64, 60_000, "ppo_atari", ("fused", "bf16", "channels_last", "compile", "compile+bf16", "cuda_graphs"),
             "cuda_graphs", 340.0, FULL_NEEDS_S)
# the smoke's budget is loose: it checks that every section runs, on a CPU that may be busy with other tests
SMOKE = Sizes("cpu", 2, 8, 1.5, (0, 1), (8, 16), 0.2, 60.0, ("eager", "bf16", "channels_last"), 8, 3.0, 4.0, "paac_classic", 16, 4000,
              "ppo_classic", ("fused", "bf16"), "bf16", 600.0, dict.fromkeys(FULL_NEEDS_S, 1.0))
PPO_PONG_START_UP_S = 20.0  # building 64 ALE envs and the first update, before ppo_pong's run counts its time
PPO_PONG_LEAST_S = 20.0


class Budget:
    """The check's wall-clock shared out between its sections, in the order of ``needs_s``.

    A section starts only where the time left covers its own least need; what the sections
    after it need at the least is kept back from the ones whose length stretches."""

    def __init__(self, total_s: float, needs_s: dict[str, float], clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.deadline = clock() + total_s
        self.needs_s = needs_s

    def left(self) -> float:
        return self.deadline - self.clock()

    def allows(self, section: str) -> bool:
        return self.left() >= self.needs_s[section]

    def spare(self, section: str) -> float:
        """Seconds ``section`` may take, keeping what every later section needs at the least
        (never below its own least need)."""
        names = list(self.needs_s)
        later = sum(self.needs_s[name] for name in names[names.index(section) + 1:])
        return max(self.needs_s[section], self.left() - later)


# how far a switch's losses may sit from float32 eager's on the same batch, relative, plus an
# absolute 1e-2 as in tests/test_perf.py (a clip fraction moves in steps of 1/minibatch):
# compiled code reorders float sums; bfloat16 keeps about 3 significant digits
SWITCH_TOLERANCE = {"fused": 1e-4, "channels_last": 1e-3, "compile": 1e-3, "bf16": 5e-2, "compile+bf16": 5e-2, "cuda_graphs": 1e-3}
SWITCH_ABSOLUTE = 1e-2

# each built-in algorithm on its smallest recipe (the classic tasks need no EnvPool)
ALGORITHM_RECIPES = {
    "paac": ("paac_classic", ()),
    "impala": ("paac_classic", ("algo.name=impala",)),
    "ppo": ("ppo_classic", ()),
    "pqn": ("pqn_classic", ()),
    "qrdqn": ("qrdqn_classic", ("algo.warmup_steps=64", "replay.minibatch_size=32")),
    "sac": ("simbav2_pendulum", ("algo.warmup_steps=64",)),
    "paac_atari": ("paac_atari", ("actors.num_envs=8",)),
}


def quiet(cfg: Config) -> Config:
    return replace(cfg, logging=replace(cfg.logging, console=False))


def default_perf(sizes: Sizes) -> dict:
    """The recipes' own perf settings on the GPU; eager in the CPU smoke, where ``perf.compile:
    auto`` would compile the Nature CNN at tens of seconds a section the smoke has no time for."""
    return {} if sizes.device != "cpu" else {"perf.compile": False}


def section_algorithms(sizes: Sizes, work: Path) -> dict:
    results = {}
    for name, (recipe, overrides) in ALGORITHM_RECIPES.items():
        cfg = quiet(build_config(recipe, {"device": sizes.device, "actors.procs": 0}, [*overrides, "checkpoint.interval_steps=0"]))
        warmup = getattr(cfg.algo, "warmup_steps", 0)  # replay-based: learning starts after it
        cfg = replace(cfg, total_steps=warmup + cfg.batch_size * sizes.algorithm_updates)
        losses: list[float] = []

        def recording(spec, cfg, device, losses=losses):
            algo = make_algorithm(spec, cfg, device)
            update = algo.update

            def recorded(batch):
                result = update(batch)
                losses.extend(float(v) for tag, v in result.metrics.items() if tag.startswith("losses/"))
                return result

            algo.update = recorded
            return algo

        began = time.perf_counter()
        summary = stopped_unless_done(Runner(cfg, work / f"algo_{name}", write_logs=False, algorithm=recording).run())
        finite = bool(losses) and all(math.isfinite(v) for v in losses)
        results[name] = {"updates": summary.updates, "losses_logged": len(losses), "finite": finite,
                         "seconds": round(time.perf_counter() - began, 2)}
        if not finite:
            raise AssertionError(f"{name}: {'no loss was logged' if not losses else 'a loss was not finite'} ({results[name]})")
    return results


def section_switches(sizes: Sizes) -> dict:
    """Each perf switch against float32 eager with torch's default Adam: one PPO update on the
    same batch from the same weights, its losses within SWITCH_TOLERANCE, and compiling really
    compiled (dynamo's counters, no graph break): the tests' check of the switches, on the
    GPU. "fused" is `perf.optimizer_kernel: fused` alone (auto's choice on CUDA)."""
    from torch._dynamo.utils import counters

    from parallel_rl.bench import fixed_batch
    from parallel_rl.envs import env_spec

    device = torch.device(sizes.device)
    base = build_config(sizes.switches_recipe, {"device": sizes.device, "actors.num_envs": 8},
                        ["algo.update_epochs=1", "logging.diag_interval=0", "optim.name=adam"])
    spec = env_spec(base.env)
    batch = fixed_batch(base, device)

    def losses_of(switch: str, policy_lag: int = 0) -> dict[str, float]:
        graphs = switch == "cuda_graphs"
        cfg = replace(base, perf=replace(base.perf, compile="compile" in switch, amp="bf16" if "bf16" in switch else "off",
                                         cuda_graphs=graphs, optimizer_kernel="fused" if switch == "fused" else "default",
                                         channels_last=switch == "channels_last"),
                      actors=replace(base.actors, max_policy_lag=policy_lag))
        torch.manual_seed(1)  # the same initial weights and minibatch shuffles
        torch._dynamo.reset()
        counters.clear()
        metrics = make_algorithm(spec, cfg, device).update(batch).metrics
        if ("compile" in switch or graphs) and (counters["stats"]["unique_graphs"] < 1 or counters["graph_break"]):
            raise AssertionError(f"{switch}: dynamo captured {counters['stats']['unique_graphs']} graphs, "
                                 f"graph breaks {dict(counters['graph_break'])}")
        if graphs and (counters["inductor"]["cudagraph_skips"] or not cuda_graphs_recorded(device)):
            raise AssertionError(f"cuda_graphs: inductor skipped CUDA graphs {counters['inductor']['cudagraph_skips']} "
                                 "times or recorded none (its log says why)")
        return {tag: float(v) for tag, v in metrics.items() if tag.startswith("losses/")}

    def compared(switch: str, eager: dict[str, float], losses: dict[str, float], name: str) -> dict:
        worst = max(abs(losses[tag] - value) / max(abs(value), 1e-2) for tag, value in eager.items())
        off = [tag for tag, value in eager.items()
               if abs(losses[tag] - value) > SWITCH_TOLERANCE[switch] * abs(value) + SWITCH_ABSOLUTE]
        if off:
            raise AssertionError(f"{name}: losses {losses} differ from eager's {eager} beyond tolerance in {off}")
        return {"largest_relative_difference": round(worst, 5), "tolerance": SWITCH_TOLERANCE[switch]}

    eager = losses_of("eager")
    rows = {switch: compared(switch, eager, losses_of(switch), switch) for switch in sizes.switches}
    lagged = f"{sizes.lagged_switch}, policy lag 2"
    rows[lagged] = compared(sizes.lagged_switch, losses_of("eager", 2), losses_of(sizes.lagged_switch, 2), lagged)
    return {"recipe": sizes.switches_recipe, "eager_losses": eager, "switches": rows}


def cuda_graphs_recorded(device: torch.device) -> bool:
    """Whether inductor's CUDA graph trees hold a recorded graph on ``device``."""
    from torch._inductor.cudagraph_trees import get_manager

    manager = get_manager(device.index or 0, create_if_none_exists=False)
    return manager is not None and any(manager.roots.values())


def section_checkpoint(sizes: Sizes, work: Path) -> dict:
    run_dir = work / "checkpoint_run"
    cfg = quiet(build_config("ppo_classic", {"device": sizes.device, "total_steps": 1_024, "actors.procs": 0}))
    first = stopped_unless_done(Runner(cfg, run_dir).run())
    resumed = ckpt.resume(run_dir, {"device": "cpu", "total_steps": 2_048}, [])
    if resumed.step != first.final_step:
        raise AssertionError(f"the checkpoint holds step {resumed.step}, the run ended at {first.final_step}")
    second = stopped_unless_done(Runner(quiet(resumed.config), run_dir, resumption=resumed).run())
    if second.final_step < 2_048:
        raise AssertionError(f"the resumed run stopped at step {second.final_step}")
    return {"written_on": sizes.device, "resumed_on": "cpu", "step_at_resume": resumed.step, "final_step": second.final_step}


def section_bench(sizes: Sizes, work: Path) -> dict:
    """Each layout of ``sizes.bench_layouts`` (-1: the default's choice), raw stepping measured
    once for all layouts whose actors have the same threads between them."""
    from parallel_rl.bench import actor_threads, run_bench
    from parallel_rl.runtime.layout import resolve_procs

    layouts: dict[int, dict] = {}
    raw_by_threads: dict[int, list[float]] = {}
    default = None
    for asked in sizes.bench_layouts:
        cfg = build_config("ppo_atari", {"device": sizes.device, "actors.num_envs": sizes.bench_envs, "actors.procs": asked,
                                          **default_perf(sizes)})
        procs = resolve_procs(cfg)
        if asked < 0:
            default = procs
        if procs in layouts:
            continue
        threads = actor_threads(cfg)
        layouts[procs] = run_bench(cfg, sizes.bench_seconds, repeats=1, progress=False, raw_sps=raw_by_threads.get(threads))
        raw_by_threads.setdefault(threads, layouts[procs]["raw_sps"])
    best = max(layouts, key=lambda k: layouts[k]["train_sps_median"])
    result = {"layouts": layouts, "best_layout": best}
    if default is not None:
        result["default_layout"] = default
        result["default_of_best"] = round(layouts[default]["train_sps_median"] / layouts[best]["train_sps_median"], 3)
    return result


def timed(step: Callable[[], object], seconds: float, device: torch.device) -> float:
    """Calls per second of ``step`` over about ``seconds``, after three warm-up calls."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        step()
    synchronize()
    calls, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        step()
        calls += 1
    synchronize()
    return calls / (time.perf_counter() - began)


def cnn_throughput(net: torch.nn.Module, variant: str, batch: int, seconds: float, device: torch.device) -> dict:
    """Observations per second through ``net`` (inference; a policy-gradient update with Adam)."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    obs = torch.randint(0, 256, (batch, 4, 84, 84), dtype=torch.uint8, device=device)
    actions = torch.randint(0, 6, (batch,), device=device)
    advantages = torch.randn(batch, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in variant)
    forward = net
    # a fresh cache for each compiled cell: the cells share the network's forward code, so
    # without it dynamo recompiles per batch, autocast and grad mode until its recompile limit
    # (8) and then silently runs the rest eagerly
    torch._dynamo.reset()
    if variant.startswith("compile"):
        forward = torch.compile(net)
    elif variant == "cuda_graphs":
        forward = torch.compile(net, mode="reduce-overhead")

    # acting's grad mode (runtime/rollout.py, NetworkPolicy): no_grad where the same network
    # also learns in CUDA graphs, as a first recording in inference mode breaks the training one
    grad_free = torch.no_grad if variant == "cuda_graphs" else torch.inference_mode

    def infer():
        with grad_free(), amp:
            return forward(obs)

    def update():
        with amp:
            logits, values = forward(obs)
            log_probs = torch.log_softmax(logits.float(), -1).gather(1, actions[:, None]).squeeze(1)
            loss = -(log_probs * advantages).mean() + 0.5 * (values.float() - advantages).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return {"inference_obs_per_s": round(batch * timed(infer, seconds, device)),
            "update_obs_per_s": round(batch * timed(update, seconds, device))}


def section_nature_cnn(sizes: Sizes, deadline: float) -> dict:
    import gymnasium as gym
    import numpy as np

    from parallel_rl.algos import make_policy
    from parallel_rl.envs import EnvSpec

    device = torch.device(sizes.device)
    cfg = build_config("ppo_atari", {"device": sizes.device, "perf.compile": False, "perf.amp": "off"})  # each variant compiles and casts its own
    spec = EnvSpec("Pong-v5", "synthetic", (4, 84, 84), np.dtype(np.uint8), gym.spaces.Discrete(6), True)
    rows = []
    cell_s: dict[str, float] = {}  # each variant's last cell, compiling included: what its next one will take
    # the largest batch (an update's on a GPU) of every variant first, so a budget that runs
    # out leaves whole columns; a cell starts only if one like the variant's last ends in time
    for batch in sorted(sizes.cnn_batches, reverse=True):
        for variant in sizes.cnn_variants:
            row: dict = {"variant": variant, "batch": batch}
            began = time.perf_counter()
            if began + cell_s.get(variant, 0.0) > deadline:
                row["skipped"] = "time budget"
            else:
                try:
                    layout = replace(cfg, perf=replace(cfg.perf, channels_last="channels_last" in variant))
                    row.update(cnn_throughput(make_policy(spec, layout, device).net, variant, batch, sizes.cnn_seconds, device))
                except Exception as exc:  # a variant this torch or device cannot run is a finding, not a crash
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                cell_s[variant] = time.perf_counter() - began
            rows.append(row)
    rows.sort(key=lambda row: (sizes.cnn_variants.index(row["variant"]), row["batch"]))
    return {"rows": rows}


def ppo_pong_run(sizes: Sizes, work: Path, envs: int, seconds: float, cuda_graphs: bool = False) -> dict:
    cfg = quiet(build_config("ppo_atari", {"device": sizes.device, "actors.num_envs": envs, "total_steps": 10**9,
                                          "perf.cuda_graphs": cuda_graphs, **default_perf(sizes)},
                             ["checkpoint.interval_steps=0"]))
    run_dir = work / f"ppo_pong_{envs}{'_cuda_graphs' if cuda_graphs else ''}"
    summary = stopped_unless_done(Runner(cfg, run_dir, write_logs=False).run(max_seconds=seconds))
    return {"envs": envs, "seconds": round(summary.seconds, 1), "agent_steps": summary.steps,
            "sps": round(summary.sps), "episodes": summary.episodes, "recent_return": summary.recent_return}


def section_ppo_8_envs(sizes: Sizes, work: Path) -> dict:
    """``ppo_atari`` as it stands, 8 envs x 128 steps, then with ``perf.cuda_graphs`` (on a GPU):
    the speed LeanRL's compiled, CUDA-graphed PPO reaches on an H100 with these settings is
    6,800 agent steps/s."""
    result = ppo_pong_run(sizes, work, 8, sizes.ppo_8_envs_seconds)
    if sizes.device == "cuda":
        graphed = ppo_pong_run(sizes, work, 8, sizes.ppo_8_envs_seconds, cuda_graphs=True)
        result["cuda_graphs_sps"] = graphed["sps"]
        result["cuda_graphs_speed_up"] = round(graphed["sps"] / max(result["sps"], 1), 2)
    return result


def section_ppo_pong(sizes: Sizes, work: Path, seconds: float) -> dict:
    result = ppo_pong_run(sizes, work, sizes.pong_envs, seconds)
    return {**result, "reached_20": bool(result["recent_return"] >= 20)}


def ppo_pong_seconds(sizes: Sizes, spare: float) -> float:
    """ppo_pong's run: what the budget leaves after its start-up, at most ``sizes.pong_seconds``."""
    return min(sizes.pong_seconds, max(PPO_PONG_LEAST_S, spare - PPO_PONG_START_UP_S))


def section_ranks(sizes: Sizes, work: Path, seconds: float) -> dict:
    """Steady agent steps/s on 1, 2 (and 4) ranks; every launch ends within ``seconds`` of
    the section's start."""
    from ranks import CellTimedOut, run_cell  # benchmarks/ranks.py, beside this script

    deadline = time.perf_counter() + seconds

    gpus = torch.cuda.device_count() if sizes.device == "cuda" else 0
    counts = [1, 2, *([4] if gpus >= 4 else [])]
    extra = ("--device", sizes.device, "--actors", str(sizes.ranks_envs))
    rows, not_measured = [], []
    for ranks in counts:
        left = deadline - time.perf_counter()
        if left <= 0:
            not_measured.append(f"{ranks} ranks: no time left in the section")
            continue
        try:
            sps, wall = run_cell(sizes.ranks_recipe, ranks, sizes.ranks_steps, work / f"ranks_{ranks}", extra, timeout_s=left)
        except CellTimedOut as exc:
            if not rows:  # nothing to compare with: the section failed
                raise
            not_measured.append(f"{ranks} ranks: {exc}")  # the time ran short; the rows measured stand
            continue
        rows.append({"ranks": ranks, "sps": round(sps), "wall_s": round(wall, 1)})
    single = rows[0]["sps"]
    for row in rows:
        row["speed_up"] = round(row["sps"] / single, 2)
        # per added GPU: the fraction of N x one GPU's speed; ranks sharing a GPU have none
        row["scaling_efficiency"] = round(row["sps"] / (row["ranks"] * single), 2) if row["ranks"] <= max(gpus, 1) else None
    backend = "nccl" if gpus >= 2 else "gloo (ranks share one GPU: NCCL refuses that)" if gpus == 1 else "gloo (CPU)"
    return {"recipe": sizes.ranks_recipe, "envs_in_all": sizes.ranks_envs, "steps": sizes.ranks_steps, "gpus": gpus,
            "backend": backend, "rows": rows, "not_measured": not_measured}


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['mode']})", "", f"- machine: {report['machine']}", ""]
    for name, section in report["sections"].items():
        status = "skipped" if "skipped" in section else "ok" if section["ok"] else "FAILED"
        lines += [f"## {name}: {status} ({section['seconds']:.0f} s)", ""]
        if "skipped" in section:
            lines += [section["skipped"], ""]
            continue
        if not section["ok"]:
            lines += ["```", section["error"].rstrip(), "```", ""]
            continue
        result = section["result"]
        if name == "nature_cnn":
            lines += ["| variant | batch | inference obs/s | update obs/s |", "|---|---:|---:|---:|"]
            lines += [f"| {r['variant']} | {r['batch']} | {r.get('inference_obs_per_s', r.get('skipped', r.get('error', '')))} | "
                      f"{r.get('update_obs_per_s', '')} |" for r in result["rows"]]
        elif name == "bench":
            lines += ["| K | raw SPS | pipeline SPS | training SPS | training / raw |", "|---:|---:|---:|---:|---:|"]
            lines += [f"| {k} | {r['raw_sps_median']:,.0f} | {r['pipeline_sps_median']:,.0f} | {r['train_sps_median']:,.0f} | "
                      f"{r['end_to_end_efficiency']:.2f} |" for k, r in result["layouts"].items()]
            default = (f"; the default layout, K = {result['default_layout']}, trains at {result['default_of_best']:.2f} of it"
                       if "default_layout" in result else "")
            lines += ["", f"fastest layout: K = {result['best_layout']}{default}; raw stepping measured once for layouts "
                      "whose actors have the same threads", "",
                      "wall-clock of each phase, start-up included (s): " + "; ".join(
                          f"K = {k}: " + ", ".join(f"{phase} {'/'.join(map(str, walls))}" for phase, walls in r["phase_wall_s"].items())
                          for k, r in result["layouts"].items())]
        elif name == "ranks":
            lines += [f"{result['recipe']}, {result['envs_in_all']} envs in all, {result['steps']:,} steps, {result['gpus']} GPU(s), "
                      f"gradients through {result['backend']}", "",
                      "| ranks | agent steps/s | speed-up | scaling efficiency | wall-clock (s) |", "|---:|---:|---:|---:|---:|"]
            lines += [f"| {r['ranks']} | {r['sps']:,} | {r['speed_up']:.2f} | {r['scaling_efficiency'] if r['scaling_efficiency'] is not None else '-'} | "
                      f"{r['wall_s']} |" for r in result["rows"]]
            lines += [f"- not measured: {text}" for text in result.get("not_measured", [])]
        else:
            lines += [f"- {key}: {value}" for key, value in result.items()]
        lines.append("")
    return "\n".join(lines)


def write_report(out: Path, report: dict) -> None:
    """``report`` as ``out/gpu_check.json`` (strict JSON: a figure a section could not measure
    is null, not NaN) and ``out/gpu_check.md``."""
    (out / "gpu_check.json").write_text(json.dumps(null_for_unmeasured(report), indent=2, default=str, allow_nan=False))
    (out / "gpu_check.md").write_text(markdown(report))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, under a minute: the script cannot rot")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"the whole check's wall-clock in seconds (default {FULL.budget_s:.0f}; the smoke's is loose)")
    parser.add_argument("--pong-seconds", type=float, default=None,
                        help=f"the longest ppo_pong run (default {FULL.pong_seconds:.0f}); the budget may leave it less")
    args = parser.parse_args()
    for flag, value in (("--budget-s", args.budget_s), ("--pong-seconds", args.pong_seconds)):
        if value is not None and not value > 0:  # NaN too
            parser.error(f"{flag} must be a positive number of seconds, not {value}")
    sizes = SMOKE if args.smoke else FULL
    sizes = replace(sizes, budget_s=args.budget_s if args.budget_s is not None else sizes.budget_s,
                    pong_seconds=args.pong_seconds if args.pong_seconds is not None else sizes.pong_seconds)
    if sizes.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on the GPU machine, or --smoke for the CPU smoke run.", file=sys.stderr)
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {args.out}: {exc.strerror}; give a folder that can be created and written to")
    started = time.perf_counter()
    machine = f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
    if torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name(0)}"
    # whether perf.amp: bf16 could pay on each device here (actor processes act on the CPU)
    machine += ", bf16 units: " + ", ".join(f"{kind} {'yes' if native_bf16(torch.device(kind)) else 'no'}"
                                            for kind in ("cpu", "cuda") if kind == "cpu" or torch.cuda.is_available())
    report = {"mode": "smoke (CPU)" if args.smoke else "full", "machine": machine, "budget_s": sizes.budget_s, "sections": {}}
    budget = Budget(sizes.budget_s, sizes.needs_s)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        sections = {
            "algorithms": lambda: section_algorithms(sizes, work),
            "switches": lambda: section_switches(sizes),
            "checkpoint": lambda: section_checkpoint(sizes, work),
            "ppo_8_envs": lambda: section_ppo_8_envs(sizes, work),
            "bench": lambda: section_bench(sizes, work),
            "nature_cnn": lambda: section_nature_cnn(
                sizes, deadline=time.perf_counter() + min(sizes.cnn_most_s, budget.spare("nature_cnn"))),
            "ranks": lambda: section_ranks(sizes, work, budget.spare("ranks")),
            "ppo_pong": lambda: section_ppo_pong(sizes, work, ppo_pong_seconds(sizes, budget.spare("ppo_pong"))),
        }
        if list(sections) != list(sizes.needs_s):
            raise AssertionError(f"the budget's sections {list(sizes.needs_s)} are not the check's {list(sections)}")
        for name, run in sections.items():
            began = time.perf_counter()
            if not budget.allows(name):
                entry = {"ok": True, "skipped": f"skipped: {budget.left():.0f} s of the {sizes.budget_s:.0f}-s budget left, "
                                                f"under the {sizes.needs_s[name]:.0f} s it needs"}
            else:
                try:
                    entry = {"ok": True, "result": run()}
                except KeyboardInterrupt as stop:  # Ctrl-C, or a signal a run stopped on: the check ends here
                    report["sections"][name] = {"ok": False, "error": "interrupted", "seconds": time.perf_counter() - began}
                    write_report(args.out, report)
                    print(f"{name}: interrupted; wrote what was measured to {args.out}", file=sys.stderr)
                    return 128 + getattr(stop, "signum", 2)
                except Exception:
                    entry = {"ok": False, "error": traceback.format_exc()}
            entry["seconds"] = time.perf_counter() - began
            report["sections"][name] = entry
            print(f"{name}: {'skipped' if 'skipped' in entry else 'ok' if entry['ok'] else 'FAILED'} in {entry['seconds']:.1f} s",
                  flush=True)
            write_report(args.out, report)
    skipped = [name for name, section in report["sections"].items() if "skipped" in section]
    print(f"wrote {args.out / 'gpu_check.md'} and gpu_check.json in {time.perf_counter() - started:.0f} s"
          + (f"; skipped for time: {', '.join(skipped)}" if skipped else ""))
    return 0 if all(s["ok"] for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
