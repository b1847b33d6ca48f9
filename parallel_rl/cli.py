"""`parallel-rl launch | eval | bench | envs | config | report`: thin, delegates to the package."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path

from . import checkpoint as ckpt
from . import distributed
from .algos.base import NonFiniteUpdates
from .config import (
    DEFAULT_RECIPE,
    Config,
    ConfigError,
    build_config,
    check_device,
    check_path,
    check_seed,
    check_writable_folder,
    describe,
    dump_yaml,
    kept_config_name,
    nearest_existing,
)
from .runtime import signals, supervision
from .runtime.pipeline import ActorProcessFailure

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


def given(kind: str):
    """An argparse type that refuses an empty value, which would otherwise read as "not given"
    (``--resume "$RUN"`` with RUN unset would start a new default run), and a path no
    filesystem call can take."""
    def parse(value: str) -> str:
        if not value.strip():
            raise argparse.ArgumentTypeError(f"the value is empty: give {kind}")
        try:
            check_path("the path", value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value
    return parse


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=given("a recipe name or a YAML file"), help=f"YAML recipe: a file or a name in configs/ (default {DEFAULT_RECIPE})")
    p.add_argument("--actors", type=int, help="number of environments stepped in parallel (actors.num_envs)")
    p.add_argument("--actor-procs", type=int, metavar="K",
                   help="actor processes sharing the environments; 0 = synchronous, -1 = from the cores: inline below 4, "
                        "one per 4 above, at most 8 (actors.procs)")
    p.add_argument("--env", type=given("an environment id"), help="environment id, e.g. Pong-v5 or CartPole-v1 (env.id)")
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
    launch.add_argument("--run-dir", type=given("a folder path"), help="run directory to create (default: a new one under logging.run_root)")
    launch.add_argument("--resume", metavar="RUN_DIR", type=given("a run directory"), help="continue RUN_DIR from its newest checkpoint (same step counter, optimizer and LR schedule)")
    launch.add_argument("--nproc-per-node", type=int, metavar="N",
                        help="train one policy on N ranks of this machine (torch.distributed through torchrun: NCCL on GPUs, "
                             "gloo on CPUs); --actors and --steps count all ranks together. Across machines run "
                             "`torchrun ... -m parallel_rl launch ...` (docs/distributed.md)")
    launch.add_argument("--dry-run", action="store_true",
                        help="check the configuration (with --resume, also the checkpoint), print it resolved as YAML "
                             "(itself a valid --config file) and exit without creating anything")

    ev = sub.add_parser("eval", help="evaluate a checkpoint", description="Play N episodes with a trained policy and print mean ± std return.")
    ev.add_argument("path", type=given("a run directory or a checkpoint file"), help="a run directory (its newest checkpoint) or a checkpoint file")
    ev.add_argument("--episodes", type=int, default=10, help="episodes to play (default 10)")
    ev.add_argument("--greedy", action="store_true", help="take the most probable action instead of sampling")
    ev.add_argument("--device", default="cpu", help="device for inference (default cpu)")
    ev.add_argument("--seed", type=int, default=12345, help="seed of the evaluation environments")
    ev.add_argument("--video", nargs="?", const="", metavar="PATH",
                    help="also film the first environment's episodes into an MP4 (default PATH: RUN_DIR/videos/eval_step_<N>.mp4) "
                         "and log them to the run's TensorBoard as eval/video")
    ev.add_argument("--video-episodes", type=int, metavar="N", help="episodes in the video (default 1; implies --video)")

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

    report = sub.add_parser("report", help="learning curves and a table of final scores from runs",
                            description="Learning-curve PNGs (mean and 95% bootstrap band over seeds, one per env) and a "
                                        "markdown table of final scores, from the runs' TensorBoard logs.")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", type=given("a run directory or a folder of them"),
                        help="run directories, or folders searched for run directories (e.g. runs/)")
    report.add_argument("--out", default="report", metavar="DIR", type=given("a folder path"), help="folder for report.md and the PNGs (default report/)")
    report.add_argument("--x", choices=("steps", "time"), default="steps",
                        help="x-axis: agent steps (all environments together) or wall-clock time (default steps)")
    report.add_argument("--paper", action="store_true",
                        help="put each final score beside the papers' reference score for its env and algorithm "
                             "(parallel_rl/paper_scores.yaml, each with its source), and draw it in the plots")
    return parser


def _flags(args: argparse.Namespace) -> dict:
    return {key: getattr(args, flag) for flag, key in LAUNCH_FLAGS.items() if getattr(args, flag, None) is not None}


def check_layout(cfg, ranks: int) -> None:
    """A policy-lag bound the actor processes of each of ``ranks`` ranks (on this machine)
    cannot keep, refused before any rank starts."""
    from .runtime.layout import check_policy_lag_fits, resolve_procs

    share = distributed.rank_config(cfg, distributed.World(0, ranks))
    check_policy_lag_fits(share, resolve_procs(share, local_ranks=ranks))


def check_before_start(cfg, resumption: ckpt.Resumption | None, ranks: int) -> None:
    """What a run refuses once it starts, for ``--dry-run``: an algorithm or network that
    does not fit the env (what each of ``ranks`` ranks runs), and on a resume a checkpoint
    that does not fit the network."""
    import torch

    from .algos import check_fit, make_algorithm
    from .envs import env_spec

    spec = env_spec(cfg.env)
    check_fit(distributed.rank_config(cfg, distributed.World(0, ranks)), spec)
    if resumption is not None:
        ckpt.restore(make_algorithm(spec, cfg, torch.device("cpu")), resumption.state, resumption.checkpoint, cfg.env.id)


def cmd_launch(args: argparse.Namespace) -> int:
    from .algos import refuse_unbuildable_compile
    from .envs import choose_backend
    from .runtime.runner import Runner, learner_device, new_run_dir

    resumption = None
    if args.resume:
        if any(value is not None for value in (args.config, args.env, args.actors, args.run_dir, args.actor_procs)):
            raise ConfigError("--resume continues a run with its own saved config: drop --config, --env, --actors, --actor-procs and --run-dir "
                              "(only --steps, --device, --seed and --set may change on resume).")
        changes = {LAUNCH_FLAGS[key]: getattr(args, key) for key in ("steps", "device", "seed") if getattr(args, key) is not None}
        resumption = ckpt.resume(Path(args.resume), changes, args.overrides)
        if resumption.notice and distributed.world_from_env().main:
            print(resumption.notice, flush=True)
        cfg, run_dir = resumption.config, resumption.run_dir
        if distributed.world_from_env().main:  # rank 0's runner holds it once started: refused before anything starts
            ckpt.refuse_a_run_directory_in_use(run_dir)
    else:
        cfg = build_config(args.config, _flags(args), args.overrides)
        choose_backend(cfg.env)  # unknown env ids fail before anything is created
        run_dir = Path(args.run_dir) if args.run_dir else new_run_dir(cfg)
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"--run-dir {str(run_dir)!r} is a file, not a directory.")
        if distributed.world_from_env().main:
            ckpt.refuse_a_run_directory_in_use(run_dir)
            if run_dir.exists() and any(p.name != ckpt.RUN_LOCK for p in run_dir.iterdir()):
                if ckpt.list_checkpoints(run_dir / "checkpoints"):
                    raise ConfigError(f"--run-dir {str(run_dir)!r} exists and is not empty; to continue that run use --resume {str(run_dir)!r}.")
                raise ConfigError(f"--run-dir {str(run_dir)!r} exists and is not empty, and holds no checkpoint to resume from (a run "
                                  "that stopped before its first one): delete or move it, or choose another --run-dir.")
    ranks = 1 if args.nproc_per_node is None else args.nproc_per_node
    distributed.check_supported(cfg, ranks)  # before any rank starts: a bad config exits 2 here, once
    if not distributed.world_from_env().active:  # a rank torchrun started checks its own share as it starts
        check_layout(cfg, ranks)
    device = learner_device(cfg, probe_compile=False)
    # a bare cuda is GPU 0: a probe there by a launcher of several ranks (which lives as long as
    # they do) or by a torchrun rank would hold a CUDA context on GPU 0 all along; each rank's runner probes its own
    if device.type != "cuda" or (ranks == 1 and not distributed.world_from_env().active):
        refuse_unbuildable_compile(cfg, device)
    if args.dry_run:
        check_before_start(cfg, resumption, ranks)
        print(dump_yaml(cfg), end="")
        return 0
    main_rank = distributed.world_from_env().main  # only rank 0 of a multi-rank run speaks
    if resumption is not None and resumption.finished:
        if main_rank:
            print(f"{run_dir} already reached total_steps = {cfg.total_steps} (checkpoint at step {resumption.step}); "
                  f"raise it with --steps to train further.")
        return 0
    if ranks > 1 and not distributed.world_from_env().active:
        return start_ranks(args, ranks, None if args.resume else run_dir)
    if resumption is not None and main_rank:
        print(f"resuming {run_dir} from step {resumption.step}", flush=True)
        if resumption.changed:
            print(f"changed on resume ({len(resumption.changed)}): " + "; ".join(resumption.changed)
                  + f". The settings of the steps so far stay in {run_dir / kept_config_name(resumption.step)}.", flush=True)
    summary = Runner(cfg, run_dir, resumption=resumption).run()
    if not main_rank:
        return signals.exit_code(summary.stop_signal) if summary.stop_signal is not None else 0
    print(f"\ndone: {summary.final_step:,} agent steps ({summary.sps:,.0f} SPS after start-up), "
          f"{summary.episodes} episodes, recent mean return {summary.recent_return:.2f}; checkpoint {summary.checkpoint}")
    return signals.exit_code(summary.stop_signal) if summary.stop_signal is not None else 0


def start_ranks(args: argparse.Namespace, ranks: int, run_dir: Path | None) -> int:
    """Run this very command on ``ranks`` ranks of this machine through torch.distributed.run
    (what ``torchrun --standalone --nproc-per-node N -m parallel_rl ...`` does); a new run's
    directory is named here, so that every rank agrees on it. Returns torchrun's exit code."""
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    argv = [a for i, a in enumerate(args.argv) if not (a.startswith("--nproc-per-node") or
                                                        (i and args.argv[i - 1] == "--nproc-per-node"))]
    if run_dir is not None and args.run_dir is None:
        argv += ["--run-dir", str(run_dir)]
    # torchrun keeps its workers' error files in a temporary folder it leaves behind on failure
    with tempfile.TemporaryDirectory(prefix="parallel-rl-torchrun-") as logs:
        options = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={ranks}", f"--log-dir={logs}",
                                                "-m", "parallel_rl", *argv])
        # torchrun's agent runs in this process: a stop signal reaches it (and, from the
        # terminal, the ranks), it passes the signal on to the ranks, which stop after the same
        # update with a final checkpoint, waits for them, then raises SignalException
        with signals.handled(signals.raise_interrupted):  # restored once torchrun's agent is done
            try:
                torchrun(options)
            except SignalException as exc:
                raise signals.Interrupted(int(exc.sigval)) from None
            except ChildFailedError as exc:  # each failed rank said why on stderr
                return job_exit_code(exc.failures)
    return 0


def job_exit_code(failures: dict) -> int:
    """The exit code of a job whose ranks ``failures`` (rank: torchrun's ProcessFailure) failed,
    as the run would have exited on one rank where they all ended alike."""
    if all(failure.exitcode == EXIT_USAGE for failure in failures.values()):
        return EXIT_USAGE  # refused to start, on every rank together: rank 0 said why
    stopped_by = {signals.signal_of_exit_code(failure.exitcode) for failure in failures.values()}
    if len(stopped_by) == 1 and None not in stopped_by:
        # every rank ended as one stop signal asks (heard by one rank, agreed by all),
        # each with its final checkpoint: rank 0 said where
        return signals.exit_code(stopped_by.pop())
    ended = ", ".join(f"rank {rank} " + (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
                                         else f"exited with code {failure.exitcode}")
                      for rank, failure in sorted(failures.items()))
    print(f"parallel-rl: the job failed: {ended}.", file=sys.stderr)
    return EXIT_FAILURE


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import MAX_EVAL_ENVS, default_video_path, evaluate

    if args.episodes < 1:
        raise ConfigError(f"--episodes {args.episodes} is invalid: play at least 1 episode.")
    if args.video_episodes is not None and args.video_episodes < 1:
        raise ConfigError(f"--video-episodes {args.video_episodes} is invalid: film at least 1 episode.")
    check_device("--device", args.device)
    check_seed("--seed", args.seed, min(args.episodes, MAX_EVAL_ENVS))
    if args.video and Path(args.video).suffix.lower() != ".mp4":
        raise ConfigError(f"--video {args.video!r}: the video is an MP4 file; give a path ending in .mp4.")
    if args.video:
        check_path("--video", args.video)
        if Path(args.video).is_dir():
            raise ConfigError(f"--video {args.video!r} is a directory: give the MP4 file's path (e.g. {args.video}/eval.mp4).")
        check_writable_folder(Path(args.video).resolve().parent, f"--video {args.video!r}")
    path = ckpt.find(Path(args.path))
    if args.video == "" or (args.video is None and args.video_episodes is not None):  # the default path, in the run
        check_writable_folder(nearest_existing(default_video_path(path, 0).parent), "--video (its default path in the run directory; give --video PATH elsewhere)")
    result = evaluate(path, args.episodes, greedy=args.greedy, device=args.device, seed=args.seed,
                      video=args.video is not None or args.video_episodes is not None,
                      video_path=Path(args.video) if args.video else None, video_episodes=args.video_episodes or 1)
    returns = result.returns
    mean = sum(returns) / len(returns)
    std = (sum((r - mean) ** 2 for r in returns) / len(returns)) ** 0.5
    print(f"{path}: mean return {mean:.2f} ± {std:.2f} over {len(returns)} episodes")
    if (video := result.video) is not None:
        print(f"video: {video.path}: {len(video.returns)} episode(s) of {' + '.join(map(str, video.lengths))} steps, "
              f"returns {', '.join(f'{r:.2f}' for r in video.returns)}; {video.frames} frames ({video.source}, {video.fps:g} fps)")
        print(f"logged to {video.tensorboard} as eval/video at step {video.step}" if video.tensorboard else
              f"not logged to TensorBoard: {video.not_logged}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import make_report

    report = make_report([Path(p) for p in args.runs], Path(args.out), x_axis=args.x, paper=args.paper)
    print(report.table)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"\nwrote {report.markdown} and {', '.join(map(str, report.plots))}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_table, run_bench

    cfg = build_config(args.config, _flags(args), args.overrides)
    if not math.isfinite(args.seconds) or args.seconds < 1 or args.repeats < 1:
        raise ConfigError(f"--seconds {args.seconds} / --repeats {args.repeats}: measure for 1 second or more (finite: shorter "
                          "measures start-up, or nothing at all), in 1 repeat or more.")
    result = run_bench(cfg, args.seconds, args.repeats, progress=not args.json)
    print(json.dumps(null_for_unmeasured(result), indent=2, allow_nan=False) if args.json else format_table(result))
    return 0


def null_for_unmeasured(value):
    """``value`` with every NaN or infinity (a figure a phase too short could not give, such
    as updates/s from one update) as None: JSON has no NaN, and strict readers refuse it."""
    if isinstance(value, dict):
        return {key: null_for_unmeasured(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [null_for_unmeasured(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def cmd_envs(args: argparse.Namespace) -> int:
    from .envs import ale_games, envpool_ids, gymnasium_ids

    needle = args.filter.lower()
    pool, ale = set(envpool_ids()), set(ale_games())
    for env_id in sorted(pool | ale | set(gymnasium_ids())):
        if needle in env_id.lower():
            backends = [name for name, ids in (("envpool", pool), ("ale", ale)) if env_id in ids] or ["gymnasium"]
            print(f"{env_id:40s} {', '.join(backends)}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    for key, default, text in describe(Config):
        if args.filter.lower() in key.lower():
            print(f"{key:28s} {default!r:14} {text}")
    return 0


COMMANDS = {"launch": cmd_launch, "eval": cmd_eval, "bench": cmd_bench, "envs": cmd_envs, "config": cmd_config, "report": cmd_report}
LISTINGS = {"envs", "config"}  # commands that only print, whose reader may stop early


def _run_command(args: argparse.Namespace) -> int:
    try:
        return COMMANDS[args.command](args)
    except Exception as exc:
        code = _report_failure(args.command, exc)
        if code is None:
            raise
        return code


# failures the CLI explains in a paragraph of its own, without a traceback
EXPLAINED_FAILURES = (ConfigError, ckpt.CheckpointError, ActorProcessFailure, NonFiniteUpdates, ckpt.CheckpointWriteError,
                      distributed.ReplicaDivergence, distributed.RankFailure, BrokenPipeError)


def _report_failure(command: str, exc: BaseException) -> int | None:
    """Say why ``command`` failed and return its exit code, for the failures the CLI explains
    (``EXPLAINED_FAILURES``); None for any other."""
    if isinstance(exc, distributed.RefusedWithAnotherRank):
        return EXIT_USAGE  # the rank that refused said why
    if isinstance(exc, (ConfigError, ckpt.CheckpointError)):
        print(f"parallel-rl {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, ActorProcessFailure):
        print(f"parallel-rl {command}: error: {exc}\nThe run was stopped; the checkpoints it had written are intact.", file=sys.stderr)
        return EXIT_FAILURE
    if isinstance(exc, (NonFiniteUpdates, ckpt.CheckpointWriteError, distributed.ReplicaDivergence, distributed.RankFailure)):
        print(f"parallel-rl {command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if out_of_memory(exc):
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        print(f"parallel-rl {command}: error: out of memory ({detail}). The networks, the replay or the rollouts asked for "
              "more memory than the device has: reduce model.width or model.depth, replay.capacity, actors.num_envs or the "
              "minibatch, or use a larger device. Checkpoints already written are intact.", file=sys.stderr)
        return EXIT_FAILURE
    if isinstance(exc, BrokenPipeError):
        # the reader of stdout went away (`parallel-rl envs | head`): a listing is done, anything else stopped
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exit's flush cannot fail again
        if command in LISTINGS:
            return 0
        print(f"parallel-rl {command}: error: standard output was closed, so it stopped.", file=sys.stderr)
        return EXIT_FAILURE
    return None


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation a device or the host refused (torch's CPU allocator
    raises a bare RuntimeError for it)."""
    import torch

    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def _failure_interrupted(interrupt: BaseException) -> BaseException | None:
    """The explained failure a stop signal arrived in the wake of, if any: a rank whose peer
    died hears of it from its failed collective, then torchrun's SIGTERM arrives while it
    closes down; the failure is what the user must read."""
    seen = interrupt.__context__
    while seen is not None:
        if isinstance(seen, EXPLAINED_FAILURES):
            return seen
        seen = seen.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    # SIGTERM, like Ctrl-C, ends anything before or after a run with 128 + its number; a
    # running Runner installs its own handlers (stop after the update, final checkpoint)
    args = None
    with signals.handled(signals.raise_interrupted):
        try:
            args = build_parser().parse_args(argv)
            args.argv = list(sys.argv[1:] if argv is None else argv)
            return _run_command(args)
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            failure = _failure_interrupted(exc)
            if args is not None and failure is not None:
                code = _report_failure(args.command, failure)
                print(f"({signal.Signals(signum).name} arrived while it stopped.)", file=sys.stderr)
                return code
            print(f"\ninterrupted by {signal.Signals(signum).name}", file=sys.stderr)
            return signals.exit_code(signum)
        finally:
            # the command has ended and said how: a stop signal now (torchrun's SIGTERM to a rank
            # that failed, a second Ctrl-C) must not turn that into a traceback
            with signals.handled(signal.SIG_IGN):
                supervision.reap_children()


def exit_process(code: int) -> None:
    """End the process with ``code``. A torchrun rank ends with ``os._exit`` once everything
    is written and closed: at interpreter teardown gloo's threads can abort the process
    (``terminate called without an active exception``, about one exit in six on 2 cores),
    which would turn a finished run into a failed job."""
    if distributed.world_from_env().active:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_process(main())
