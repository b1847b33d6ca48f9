#!/usr/bin/env python3
"""Run a sweep of `parallel-rl launch` runs declared as data in YAML: env x seed x variant.

    python launch/sweep.py launch/sweeps/cartpole_smoke.yaml
    python launch/sweep.py launch/sweeps/paac_atari.yaml --dry-run
    python launch/sweep.py SWEEP.yaml --run-root /data/runs --parallel 4

A sweep file (only `config`, `envs` and `seeds` are required):

    config: paac_atari            # recipe: a name in configs/ or a YAML file (--config)
    envs: [Pong-v5, Breakout-v5]  # --env
    seeds: [1, 2, 3]              # --seed
    steps: 10000000               # --steps for every run (default: the recipe's)
    set: [logging.interval_s=30]  # --set for every run
    overrides:                    # named variants (default: one variant, "base", that sets nothing)
      - name: base
        set: []
      - name: ent0.01
        set: [algo.entropy_coef=0.01]
      - name: paper               # a variant may run another recipe (--config)
        config: paac_atari_paper
    parallel: 2                   # runs at a time (default 1)
    run_root: runs/paac_atari     # default runs/sweeps/<sweep file name>

Every run gets `<run_root>/<env>__<variant>__s<seed>/` as its run directory and its console
output in `<run_root>/<env>__<variant>__s<seed>.log` (appended to, never overwritten). A
summary table closes the sweep: run, exit code, the final "recent mean return" of the run's
last line, and wall time.

Before anything starts, every distinct command is checked with `parallel-rl launch
--dry-run` (the largest seed standing for the others), so a typo in a recipe or a key fails
the whole sweep with exit 2, in `--dry-run` too. A sweep whose run directories already
exist is refused unless told what to do with them: `--resume` continues each from its
newest checkpoint (`launch --resume`; a run that reached its steps stays as it is), which
finishes an interrupted sweep, and `--skip-existing` leaves them out.

Exit status: 0 when every run exited 0, 1 when any run failed, 2 for a bad sweep file or
command line, 130 when stopped by Ctrl-C or SIGTERM (forwarded once to the running runs,
which stop after their current update and write a final checkpoint; no new run starts).

Standard library and PyYAML only: the runs are separate `parallel-rl` processes.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import math
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from parallel_rl.config import ConfigError, check_path, nearest_existing, parse_yaml_file_text

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

KEYS = {
    "config": "recipe passed as --config (a name in configs/ or a YAML file)",
    "envs": "list of environment ids (--env)",
    "seeds": "list of integer seeds (--seed)",
    "steps": "agent steps for every run (--steps); default: the recipe's",
    "set": "list of key=value overrides for every run (--set)",
    "overrides": "list of named variants, each {name: ..., set: [key=value, ...], config: recipe (optional)}",
    "parallel": "number of runs at a time (default 1)",
    "run_root": "folder of the run directories (default runs/sweeps/<sweep file name>)",
}
REQUIRED = ("config", "envs", "seeds")
VARIANT_KEYS = ("name", "set", "config")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
DONE_RE = re.compile(r"^done: .*recent mean return (?P<ret>[-+0-9.naif]+)")


class SweepError(ValueError):
    """The sweep file or the command line is invalid; the message is for the user as it is."""


@dataclass
class Run:
    name: str
    run_dir: Path
    log: Path
    argv: list[str]
    exit_code: int | None = None
    mean_return: float | None = None
    seconds: float = 0.0
    status: str = "not run"
    log_start: int = 0  # the byte of the log where this attempt's output begins


@dataclass
class Sweep:
    config: str
    envs: list[str]
    seeds: list[int]
    steps: int | None = None
    common: list[str] = field(default_factory=list)
    variants: list[tuple[str, list[str], str | None]] = field(default_factory=lambda: [("base", [], None)])  # name, sets, config
    parallel: int = 1
    run_root: Path = Path("runs/sweeps")


# ---------------------------------------------------------------------------- reading


def _unknown(key: Any, valid: tuple[str, ...] | list[str], where: str) -> SweepError:
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return SweepError(f"unknown key {key!r} in {where}.{hint} Valid keys: {', '.join(valid)}.")


def _int(value: Any, what: str, minimum: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SweepError(f"{what} = {value!r} must be an integer.")
    if minimum is not None and value < minimum:
        raise SweepError(f"{what} = {value} must be {minimum} or more.")
    return value


def _assignments(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SweepError(f"{what} must be a list of key=value strings, got {value!r}.")
    out = []
    for item in value:
        if not isinstance(item, str) or "=" not in item:
            raise SweepError(f"{what}: {item!r} is not a key=value string (e.g. algo.gamma=0.995).")
        out.append(item)
    return out


def _list(value: Any, what: str) -> list:
    if not isinstance(value, list) or not value:
        raise SweepError(f"{what} must be a non-empty list, got {value!r}.")
    return value


def parse_sweep(data: Any, stem: str) -> Sweep:
    """Check a loaded sweep file; every problem is a `SweepError` naming the key at fault."""
    if not isinstance(data, dict):
        raise SweepError(f"the sweep must be a mapping with the keys {', '.join(KEYS)}; got {type(data).__name__}.")
    for key in data:
        if key not in KEYS:
            raise _unknown(key, tuple(KEYS), "the sweep")
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise SweepError(f"missing key(s) {', '.join(missing)}: " + "; ".join(f"{k}: {KEYS[k]}" for k in missing) + ".")

    config = data["config"]
    if not isinstance(config, str) or not config:
        raise SweepError(f"config = {config!r} must be a recipe name or a file path.")
    envs = _list(data["envs"], "envs")
    for env in envs:
        if not isinstance(env, str) or not env.strip() or any(c.isspace() for c in env):
            raise SweepError(f"envs: {env!r} is not an environment id.")
    seeds = [_int(seed, "seeds entry") for seed in _list(data["seeds"], "seeds")]
    for what, values in (("envs", envs), ("seeds", seeds)):
        dupes = sorted({str(v) for v in values if values.count(v) > 1})
        if dupes:
            raise SweepError(f"{what} lists {', '.join(dupes)} more than once.")

    sweep = Sweep(config=config, envs=envs, seeds=seeds, run_root=Path("runs/sweeps") / stem)
    if data.get("steps") is not None:
        sweep.steps = _int(data["steps"], "steps", 1)
    sweep.common = _assignments(data.get("set"), "set")
    if data.get("parallel") is not None:
        sweep.parallel = _int(data["parallel"], "parallel", 1)
    if data.get("run_root") is not None:
        if not isinstance(data["run_root"], str) or not data["run_root"]:
            raise SweepError(f"run_root = {data['run_root']!r} must be a folder path.")
        sweep.run_root = Path(data["run_root"])
    if data.get("overrides") is not None:
        sweep.variants = []
        for i, variant in enumerate(_list(data["overrides"], "overrides")):
            where = f"overrides[{i}]"
            if not isinstance(variant, dict):
                raise SweepError(f"{where} must be a mapping {{name: ..., set: [key=value, ...]}}, got {variant!r}.")
            for key in variant:
                if key not in VARIANT_KEYS:
                    raise _unknown(key, VARIANT_KEYS, where)
            name = variant.get("name")
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise SweepError(f"{where}.name = {name!r} must be a short name of letters, digits and _ . + - "
                                 f"(it becomes part of the run directory's name).")
            if name in (v[0] for v in sweep.variants):
                raise SweepError(f"{where}.name = {name!r}: two variants have that name.")
            recipe = variant.get("config")
            if recipe is not None and (not isinstance(recipe, str) or not recipe):
                raise SweepError(f"{where}.config = {recipe!r} must be a recipe name or a file path.")
            sweep.variants.append((name, _assignments(variant.get("set"), f"{where}.set"), recipe))
    return sweep


def load_sweep(path: Path) -> Sweep:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SweepError(f"cannot read {str(path)!r}: {exc.strerror}.") from None
    except UnicodeDecodeError as exc:
        raise SweepError(f"cannot be decoded as UTF-8 text (byte {exc.start}): not a sweep's YAML file.") from None
    try:
        data = parse_yaml_file_text(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SweepError(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}.") from None
    except RecursionError:
        raise SweepError("nests its values too deeply to be read: not a sweep's YAML file.") from None
    return parse_sweep(data, path.stem)


# ---------------------------------------------------------------------------- expanding


def has_contents(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a periodic checkpoint (``checkpoints/step_<N>.pt``) to resume from."""
    return any((run_dir / "checkpoints").glob("step_*.pt"))


def resume_argv(run: Run, sweep: Sweep, prefix: list[str]) -> list[str]:
    """``run`` continued from its newest checkpoint, with the saved config (the sweep's own settings)."""
    return [*prefix, "launch", "--resume", str(run.run_dir), *(["--steps", str(sweep.steps)] if sweep.steps is not None else [])]


def _without(argv: list[str], flags: tuple[str, ...]) -> tuple[str, ...]:
    """``argv`` without the given flags and their values."""
    at = {i for i, arg in enumerate(argv) if arg in flags}
    return tuple(arg for i, arg in enumerate(argv) if i not in at and i - 1 not in at)


NAME_MAX = 255  # bytes in one file name on Linux filesystems


def check_run_root(run_root: Path, runs: list[Run]) -> None:
    """Refuse, before any run starts, a run root that cannot hold the runs' folders and logs:
    one found unwritable as the sweep starts its second run would leave the first running
    with no sweep to supervise it."""
    longest = max((run.log.name for run in runs), key=lambda name: len(name.encode()), default="")
    if len(longest.encode()) > NAME_MAX:
        raise SweepError(f"the run name {longest[:60]!r}... makes a log file name of {len(longest.encode())} bytes, over the "
                         f"filesystem's {NAME_MAX}: shorten the variant names or env ids.")
    folder = run_root.absolute()
    try:
        folder = nearest_existing(run_root)
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder")
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise SweepError(f"run_root {str(run_root)!r}: cannot create the runs' folders in {str(folder)!r} "
                         f"({exc.strerror or exc}); choose another run_root or --run-root.") from None


def check_commands(runs: list[Run], prefix: list[str], timeout_s: float = 300.0) -> list[str]:
    """Problems ``parallel-rl launch --dry-run`` finds in the runs' commands, one per distinct
    command: new runs that differ only in their seed are checked once, with the largest seed."""
    checks: dict[tuple[str, ...], tuple[int, Run]] = {}
    for run in runs:
        seed = int(run.argv[run.argv.index("--seed") + 1]) if "--seed" in run.argv else 0
        key = _without(run.argv, ("--seed", "--run-dir"))
        if key not in checks or seed > checks[key][0]:
            checks[key] = (seed, run)
    problems = []
    for _, run in checks.values():
        try:
            done = subprocess.run([*run.argv, "--dry-run"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            problems.append(f"{run.name}: `launch --dry-run` did not finish within {timeout_s:.0f} s")
            continue
        if done.returncode != 0:
            message = done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}"
            problems.append(f"{run.name} ({shlex.join(run.argv[len(prefix):])}): {message}")
    return problems


def launcher() -> list[str]:
    """`parallel-rl` from PATH, else this interpreter's `python -m parallel_rl.cli`."""
    if shutil.which("parallel-rl"):
        return ["parallel-rl"]
    return [sys.executable, "-m", "parallel_rl.cli"]


def expand(sweep: Sweep, prefix: list[str]) -> list[Run]:
    runs = []
    for env in sweep.envs:
        for variant, assignments, recipe in sweep.variants:
            for seed in sweep.seeds:
                name = f"{env.replace('/', '_')}__{variant}__s{seed}"
                run_dir = sweep.run_root / name
                argv = [*prefix, "launch", "--config", recipe or sweep.config, "--env", env, "--seed", str(seed)]
                if sweep.steps is not None:
                    argv += ["--steps", str(sweep.steps)]
                argv += ["--run-dir", str(run_dir)]
                for assignment in (*sweep.common, *assignments):
                    argv += ["--set", assignment]
                runs.append(Run(name, run_dir, sweep.run_root / f"{name}.log", argv))
    return runs


def final_return(log: Path, since: int = 0) -> float | None:
    """The "recent mean return" of the last `done:` line of a run's log from byte ``since`` on
    (where this attempt began: a log is appended to, and an earlier attempt's line is not this
    one's), if any."""
    try:
        with log.open("rb") as f:
            f.seek(since)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        match = DONE_RE.match(line.strip())
        if match:
            try:
                return float(match["ret"])
            except ValueError:
                return None
    return None


# ---------------------------------------------------------------------------- running


class Scheduler:
    """Runs at most `parallel` runs at a time; a stop request is forwarded once per signal."""

    def __init__(self, runs: list[Run], parallel: int, out=sys.stdout):
        self.runs, self.parallel, self.out = runs, parallel, out
        self.active: dict[subprocess.Popen, tuple[Run, Any, float]] = {}
        self.stop_signal: int | None = None
        self.start_failure: str | None = None

    def _on_signal(self, signum, _frame) -> None:
        self.stop_signal = signum
        for proc in list(self.active):  # each run stops after its current update, with a checkpoint
            if proc.poll() is None:
                proc.send_signal(signum)

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _start(self, run: Run, index: int) -> None:
        run.run_dir.parent.mkdir(parents=True, exist_ok=True)
        log = run.log.open("a")
        run.log_start = log.tell()
        log.write(f"$ {shlex.join(run.argv)}\n")
        log.flush()
        # A session of its own: Ctrl-C reaches the sweep only, which forwards it exactly once.
        proc = subprocess.Popen(run.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        run.status = "running"
        self.active[proc] = (run, log, time.monotonic())
        self._print(f"[{index}/{len(self.runs)}] start {run.name}  (log {run.log})")

    def _finish(self, proc: subprocess.Popen) -> None:
        run, log, began = self.active.pop(proc)
        log.close()
        run.exit_code = proc.returncode
        run.seconds = time.monotonic() - began
        run.mean_return = final_return(run.log, run.log_start)
        run.status = "ok" if run.exit_code == 0 else ("stopped" if run.exit_code in (130, 143, -signal.SIGINT, -signal.SIGTERM) else "FAILED")
        shown = "-" if run.mean_return is None else f"{run.mean_return:.2f}"
        self._print(f"      {run.status:7s} {run.name}: exit {run.exit_code}, return {shown}, {run.seconds:.1f} s")

    def run(self) -> None:
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            pending = list(enumerate(self.runs, 1))
            while self.active or (pending and self.stop_signal is None):
                while pending and self.stop_signal is None and len(self.active) < self.parallel:
                    index, run = pending.pop(0)
                    try:
                        self._start(run, index)
                    except OSError as exc:  # the disk filled or the folder went away since the check
                        self.start_failure = f"could not start {run.name} ({exc.strerror or exc}: {exc.filename or run.log})"
                        self._print(f"      FAILED  {self.start_failure}; stopping the runs still going")
                        self._on_signal(signal.SIGTERM, None)  # each stops after its update, with a checkpoint
                time.sleep(0.1)
                for proc in [p for p in self.active if p.poll() is not None]:
                    self._finish(proc)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def summary(runs: list[Run]) -> str:
    rows = [("run", "exit", "return", "time", "status")]
    for run in runs:
        rows.append((
            run.name,
            "-" if run.exit_code is None else str(run.exit_code),
            "-" if run.mean_return is None else f"{run.mean_return:.2f}",
            "-" if run.exit_code is None else f"{run.seconds:.1f} s",
            run.status,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:4], widths[1:4], strict=True)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    returns = [r.mean_return for r in runs if r.mean_return is not None and math.isfinite(r.mean_return)]
    ok = sum(r.status == "ok" for r in runs)
    tail = f"{_plural(len(runs), 'run')}: {ok} ok, {sum(r.status == 'FAILED' for r in runs)} failed"
    if any(r.status in ("stopped", "not run") for r in runs):
        tail += f", {sum(r.status in ('stopped', 'not run') for r in runs)} stopped or not run"
    if returns:
        tail += f"; mean of the final returns {sum(returns) / len(returns):.2f}"
    return "\n".join([*lines, tail])


# ---------------------------------------------------------------------------- command line


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _listed(runs: list[Run], shown: int = 4) -> str:
    """The run directories of ``runs``, the first ``shown`` of them by name."""
    names = ", ".join(str(r.run_dir) for r in runs[:shown]) + (f" and {len(runs) - shown} more" if len(runs) > shown else "")
    return f"the run directory {names} exists" if len(runs) == 1 else f"the run directories {names} exist"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep.py", description="Run env x seed x variant `parallel-rl launch` runs declared in a YAML sweep file.",
        epilog="Sweep file keys: " + "; ".join(f"{k}: {v}" for k, v in KEYS.items()) + ".")
    parser.add_argument("sweep", type=Path, help="the sweep file, e.g. launch/sweeps/cartpole_smoke.yaml")
    parser.add_argument("--run-root", type=Path, help="folder of the run directories (overrides the file's run_root)")
    parser.add_argument("--parallel", type=int, help="runs at a time (overrides the file's parallel)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and run nothing")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true",
                          help="continue each run whose run directory exists from its newest checkpoint (a run that "
                               "reached its steps stays as it is); the others start: finishes an interrupted sweep")
    existing.add_argument("--skip-existing", action="store_true",
                          help="leave out runs whose run directory already exists and is not empty")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sweep = load_sweep(args.sweep)
        if args.run_root is not None:
            sweep.run_root = args.run_root
        if args.parallel is not None:
            sweep.parallel = _int(args.parallel, "--parallel", 1)
        try:
            check_path("run_root", str(sweep.run_root))
        except ConfigError as exc:
            raise SweepError(str(exc)) from None
    except SweepError as exc:
        print(f"sweep: error: {args.sweep}: {exc}", file=sys.stderr)
        return EXIT_USAGE

    prefix = launcher()
    runs = expand(sweep, prefix)
    existing = [r for r in runs if has_contents(r.run_dir) or r.run_dir.is_file()]
    try:
        if args.skip_existing:
            for run in existing:
                print(f"skipping {run.name}: {run.run_dir} exists")
            runs = [r for r in runs if r not in existing]
        elif args.resume:
            unresumable = [r for r in existing if not has_checkpoint(r.run_dir)]
            if unresumable:
                raise SweepError(f"--resume: {_listed(unresumable)} with no checkpoint to resume from (a run stopped before "
                                 f"its first): delete or move each to start it again, or use --skip-existing.")
            for run in existing:
                run.argv = resume_argv(run, sweep, prefix)
                print(f"resuming {run.name} from its newest checkpoint")
        elif existing:
            raise SweepError(f"{_listed(existing)} already: --resume continues each from its newest checkpoint "
                             f"(a finished run stays as it is), --skip-existing leaves them out, or choose another --run-root.")
        check_run_root(sweep.run_root, runs)
        try:
            problems = check_commands(runs, prefix)
        except KeyboardInterrupt:
            print("sweep: interrupted while checking the commands; nothing was started.", file=sys.stderr)
            return EXIT_INTERRUPTED
        if problems:
            raise SweepError(f"{_plural(len(problems), 'command')} of the sweep would fail, so none was started:\n  "
                             + "\n  ".join(problems))
    except SweepError as exc:
        print(f"sweep: error: {args.sweep}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    counts = " x ".join(_plural(n, what) for n, what in
                        ((len(sweep.envs), "env"), (len(sweep.variants), "variant"), (len(sweep.seeds), "seed")))
    print(f"# {_plural(len(runs), 'run')} ({counts}), {sweep.parallel} at a time, in {sweep.run_root}", flush=True)
    if args.dry_run:
        for run in runs:
            print(shlex.join(run.argv))
        return 0
    if not runs:
        return 0

    scheduler = Scheduler(runs, sweep.parallel)
    scheduler.run()
    print("\n" + summary(runs), flush=True)
    if scheduler.start_failure is not None:
        print(f"sweep: error: {scheduler.start_failure}; the sweep was stopped (--resume continues it).", file=sys.stderr)
        return EXIT_FAILED
    if scheduler.stop_signal is not None:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(r.exit_code != 0 for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
