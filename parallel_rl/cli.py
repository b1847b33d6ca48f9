"""`parallel-rl launch | eval | bench | envs | config`: thin, delegates to the package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import checkpoint as ckpt
from .config import (
    DEFAULT_RECIPE,
    Config,
    ConfigError,
    build_config,
    describe,
    from_dict,
    load_yaml,
    set_override,
)
from .runtime.pipeline import ActorFailure

EXIT_USAGE = 2
EXIT_FAILURE = 1

# named flags -> dotted config keys
LAUNCH_FLAGS = {
    "actors": "actors.num_envs",
    "actor_procs": "actors.procs",
    "env": "env.id",
    "steps": "total_steps",
    "seed": "seed",
    "device": "device",
}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help=f"YAML recipe: a file or a name in configs/ (default {DEFAULT_RECIPE})")
    p.add_argument("--actors", type=int, help="number of environments stepped in parallel (actors.num_envs)")
    p.add_argument("--actor-procs", type=int, metavar="K",
                   help="actor processes sharing the environments; 0 = synchronous, -1 = one per 4 cores (actors.procs)")
    p.add_argument("--env", help="environment id, e.g. Pong-v5 or CartPole-v1 (env.id)")
    p.add_argument("--steps", type=int, help="agent steps to train for, all environments together (total_steps)")
    p.add_argument("--seed", type=int, help="random seed (seed)")
    p.add_argument("--device", help="learner device: auto, cpu, cuda, cuda:N (device)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set algo.gamma=0.995 (repeatable; `parallel-rl config` lists keys)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parallel-rl", description="Massively parallel actor-learner deep RL on EnvPool.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    launch = sub.add_parser("launch", help="train an agent", description="Train an agent; outputs go to runs/<env>__<algo>__s<seed>__<time>/.")
    _add_common(launch)
    launch.add_argument("--run-dir", help="run directory to create (default: a new one under logging.run_root)")
    launch.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest checkpoint (same step counter, optimizer and LR schedule)")

    ev = sub.add_parser("eval", help="evaluate a checkpoint", description="Play N episodes with a trained policy and print mean ± std return.")
    ev.add_argument("path", help="a run directory (its newest checkpoint) or a checkpoint file")
    ev.add_argument("--episodes", type=int, default=10, help="episodes to play (default 10)")
    ev.add_argument("--greedy", action="store_true", help="take the most probable action instead of sampling")
    ev.add_argument("--device", default="cpu", help="device for inference (default cpu)")
    ev.add_argument("--seed", type=int, default=12345, help="seed of the evaluation environments")

    bench = sub.add_parser("bench", help="measure throughput: raw EnvPool vs training",
                           description="Interleaved repeats of raw EnvPool stepping and full training, reduced to medians.")
    _add_common(bench)
    bench.add_argument("--seconds", type=float, default=8.0, help="length of each measurement (default 8)")
    bench.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each measurement (default 3)")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    envs = sub.add_parser("envs", help="list environment ids")
    envs.add_argument("filter", nargs="?", default="", help="only ids containing this text (case-insensitive)")

    conf = sub.add_parser("config", help="list every config key with its default and help")
    conf.add_argument("filter", nargs="?", default="", help="only keys containing this text")
    return parser


def _flags(args: argparse.Namespace) -> dict:
    return {key: getattr(args, flag) for flag, key in LAUNCH_FLAGS.items() if getattr(args, flag, None) is not None}


def cmd_launch(args: argparse.Namespace) -> int:
    from .envs import choose_backend
    from .runtime.runner import Runner, new_run_dir

    if args.resume:
        if args.config or args.env or args.actors or args.run_dir or args.actor_procs is not None:
            raise ConfigError("--resume continues a run with its own saved config: drop --config, --env, --actors, --actor-procs and --run-dir "
                              "(only --steps, --device and --set may change on resume).")
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {args.resume!r}: no config.yaml there, so it is not a parallel-rl run directory.")
        resume_path = ckpt.find(run_dir)
        state = ckpt.load(resume_path)
        cfg = from_dict(load_yaml(run_dir / "config.yaml"))
        for key in ("steps", "device", "seed"):
            value = getattr(args, key)
            if value is not None:
                from .config import set_override_value

                set_override_value(cfg, LAUNCH_FLAGS[key], value)
        for assignment in args.overrides:
            set_override(cfg, assignment)
        cfg.validate()
        if int(state["step"]) >= cfg.total_steps:
            print(f"{run_dir} already reached total_steps = {cfg.total_steps} (checkpoint at step {state['step']}); "
                  f"raise it with --steps to train further.")
            return 0
        print(f"resuming {run_dir} from step {state['step']}", flush=True)
        runner = Runner(cfg, run_dir, resume_state=state, resume_path=resume_path)
    else:
        cfg = build_config(args.config, _flags(args), args.overrides)
        choose_backend(cfg.env)  # unknown env ids fail before anything is created
        run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(cfg)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(f"--run-dir {str(run_dir)!r} exists and is not empty; to continue that run use --resume {str(run_dir)!r}.")
        runner = Runner(cfg, run_dir)
    summary = runner.run()
    print(f"\ndone: {summary.final_step:,} agent steps ({summary.sps:,.0f} SPS after start-up), "
          f"{summary.episodes} episodes, recent mean return {summary.recent_return:.2f}; checkpoint {summary.checkpoint}")
    return 130 if summary.interrupted else 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    if args.episodes < 1:
        raise ConfigError(f"--episodes {args.episodes} is invalid: play at least 1 episode.")
    path = ckpt.find(Path(args.path))
    returns = evaluate(path, args.episodes, greedy=args.greedy, device=args.device, seed=args.seed)
    mean = sum(returns) / len(returns)
    std = (sum((r - mean) ** 2 for r in returns) / len(returns)) ** 0.5
    print(f"{path}: mean return {mean:.2f} ± {std:.2f} over {len(returns)} episodes")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_table, run_bench

    cfg = build_config(args.config, _flags(args), args.overrides)
    if args.seconds <= 0 or args.repeats < 1:
        raise ConfigError(f"--seconds {args.seconds} / --repeats {args.repeats}: both must be positive.")
    result = run_bench(cfg, args.seconds, args.repeats, progress=not args.json)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    from .envs import envpool_ids, gymnasium_ids

    needle = args.filter.lower()
    pool = set(envpool_ids())
    for env_id in sorted(pool | set(gymnasium_ids())):
        if needle in env_id.lower():
            print(f"{env_id:40s} {'envpool' if env_id in pool else 'gymnasium'}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    for key, default, text in describe(Config):
        if args.filter.lower() in key.lower():
            print(f"{key:28s} {default!r:14} {text}")
    return 0


COMMANDS = {"launch": cmd_launch, "eval": cmd_eval, "bench": cmd_bench, "envs": cmd_envs, "config": cmd_config}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, ckpt.CheckpointError) as exc:
        print(f"parallel-rl {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ActorFailure as exc:
        print(f"parallel-rl {args.command}: error: {exc}\nThe run was stopped; its last checkpoint is intact.", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
