"""launch/sweep.py: a real two-run CartPole sweep, dry runs, bad sweep files, failing runs."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "launch" / "sweep.py"
SMOKE = ROOT / "launch" / "sweeps" / "cartpole_smoke.yaml"
ATARI = ROOT / "launch" / "sweeps" / "paac_atari.yaml"


def sweep(*args, cwd=ROOT, timeout=240):
    return subprocess.run([sys.executable, str(SWEEP), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def module():
    name = "launch_sweep_under_test"
    spec = importlib.util.spec_from_file_location(name, SWEEP)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # its dataclasses look their module up while being built
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        del sys.modules[name]


def summary_rows(stdout: str) -> dict[str, list[str]]:
    table = stdout[stdout.index("\nrun ") :]
    return {line.split()[0]: line.split()[1:] for line in table.splitlines()[3:] if "__" in line}


def test_cartpole_smoke_sweep_runs_both(tmp_path):
    root = tmp_path / "runs"
    out = sweep(SMOKE, "--run-root", root)
    assert out.returncode == 0, out.stdout + out.stderr
    names = ["CartPole-v1__base__s1", "CartPole-v1__base__s2"]
    for name in names:
        run_dir = root / name
        assert (run_dir / "config.yaml").is_file(), name
        assert list((run_dir / "checkpoints").glob("step_*.pt")), name
        assert "done: 4,000 agent steps" in (root / f"{name}.log").read_text()
    rows = summary_rows(out.stdout)
    assert sorted(rows) == names
    for name in names:
        exit_code, ret = rows[name][:2]
        assert exit_code == "0"
        assert re.fullmatch(r"-?\d+\.\d+", ret), rows[name]


def test_dry_run_prints_commands_and_runs_nothing(tmp_path):
    root = tmp_path / "runs"
    out = sweep(SMOKE, "--dry-run", "--run-root", root)
    assert out.returncode == 0, out.stderr
    commands = [line for line in out.stdout.splitlines() if " launch " in line]
    assert len(commands) == 2
    for seed, command in zip((1, 2), commands, strict=True):
        assert "--config paac_classic --env CartPole-v1" in command
        assert f"--seed {seed} --steps 4000 --run-dir {root}/CartPole-v1__base__s{seed}" in command
    assert not root.exists()

    out = sweep(ATARI, "--dry-run")
    assert out.returncode == 0, out.stderr
    commands = [line for line in out.stdout.splitlines() if " launch " in line]
    assert len(commands) == 2 * 3 * 3  # envs x seeds x variants
    assert sum("--config paac_atari_paper " in c for c in commands) == 2 * 3  # a variant's own recipe
    assert all("--steps 10000000" in c for c in commands)
    assert len({re.search(r"--run-dir (\S+)", c)[1] for c in commands}) == len(commands)
    assert {re.search(r"--env (\S+)", c)[1] for c in commands} == {"Pong-v5", "Breakout-v5"}


@pytest.mark.parametrize(("text", "key"), [
    ("config: paac_classic\nenvs: [CartPole-v1]\nseed: [1]\n", "seed"),
    ("config: paac_classic\nenvs: [CartPole-v1]\nseeds: [1]\noverrides:\n  - name: a\n    sets: [seed=2]\n", "sets"),
])
def test_unknown_key_exits_2_naming_it(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out = sweep(path, "--dry-run")
    assert out.returncode == 2
    assert f"unknown key {key!r}" in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize(("text", "needle"), [
    ("envs: [CartPole-v1]\nseeds: [1]\n", "missing key(s) config"),
    ("config: paac_classic\nenvs: [CartPole-v1]\nseeds: [one]\n", "'one' must be an integer"),
    ("config: paac_classic\nenvs: []\nseeds: [1]\n", "envs must be a non-empty list"),
    ("config: paac_classic\nenvs: [CartPole-v1]\nseeds: [1]\nparallel: 0\n", "parallel = 0"),
    ("config: paac_classic\nenvs: [CartPole-v1]\nseeds: [1]\nset: [algo.gamma]\n", "key=value"),
    ("config: paac_classic\nenvs: [CartPole-v1]\nseeds: [1]\noverrides:\n  - name: a/b\n", "name = 'a/b'"),
    ("config: [unclosed\n", "not valid YAML"),
    ("config: paac_classic\nenvs: [CartPole-v1]\nseeds: [1]\nrun_root: " + "x" * 300 + "\n", "has a name of 300 bytes"),
    ('config: paac_classic\nenvs: [CartPole-v1]\nseeds: [1]\nrun_root: "a\\0b"\n', "holds a NUL byte"),
    ("config: paac_classic\nenvs: [CartPole-v1]\nseeds: [1]\nset: " + "[" * 1000 + "]" * 1000 + "\n", "nests its values too deeply"),
    ("config: paac_classic\nenvs: [CartPole-v1]\nseeds: [1]\nseeds: [2]\n", "the key 'seeds' appears twice"),
])
def test_bad_values_exit_2(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out = sweep(path, "--dry-run")
    assert out.returncode == 2 and needle in out.stderr, out.stderr


def test_a_file_that_is_not_utf8_text_exits_2(tmp_path):
    path = tmp_path / "binary.yaml"  # a checkpoint passed by mistake, or a stray byte
    path.write_bytes(b"config: paac_classic\nenvs: [Cart\xff]\nseeds: [1]\n")
    out = sweep(path, "--dry-run")
    assert out.returncode == 2 and "UTF-8" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_failing_run_fails_the_sweep(tmp_path):
    path = tmp_path / "diverges.yaml"  # valid settings that fail at run time: the loss turns NaN
    path.write_text(f"config: paac_classic\nenvs: [CartPole-v1]\nseeds: [1]\nsteps: 4000\n"
                    f"set: [optim.lr=1e30]\nrun_root: {tmp_path / 'runs'}\n")
    out = sweep(path)
    assert out.returncode == 1, out.stdout + out.stderr
    row = summary_rows(out.stdout)["CartPole-v1__base__s1"]
    assert row[0] == "1" and row[1] == "-" and row[-1] == "FAILED", row
    assert "NaN or infinite loss" in (tmp_path / "runs" / "CartPole-v1__base__s1.log").read_text()


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_command_that_would_fail_stops_the_sweep_before_any_run(tmp_path, dry_run):
    root = tmp_path / "runs"
    path = tmp_path / "typo.yaml"
    path.write_text(f"config: paac_classic\nenvs: [CartPole-v1]\nseeds: [1, 2]\nsteps: 4000\nrun_root: {root}\n"
                    "overrides:\n  - name: fine\n  - name: typo\n    set: [algo.gama=0.9]\n")
    out = sweep(path, *(["--dry-run"] if dry_run else []))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "1 command of the sweep would fail, so none was started" in out.stderr and "Traceback" not in out.stderr
    assert "CartPole-v1__typo__s2" in out.stderr and "algo.gama" in out.stderr, out.stderr  # the largest seed stands for both
    assert not root.exists()


@pytest.mark.parametrize("problem", ["run_root_is_a_file", "name_too_long"])
@pytest.mark.parametrize("dry_run", [False, True])
def test_a_run_root_that_cannot_take_the_runs_stops_the_sweep_before_any_run(tmp_path, problem, dry_run):
    (tmp_path / "afile").write_text("")
    root = tmp_path / "afile" / "runs" if problem == "run_root_is_a_file" else tmp_path / "runs"
    name = "v" * (300 if problem == "name_too_long" else 1)
    path = tmp_path / "sweep.yaml"
    path.write_text(f"config: paac_classic\nenvs: [CartPole-v1]\nseeds: [1]\nsteps: 4000\nrun_root: {root}\n"
                    f"overrides:\n  - name: ok\n  - name: {name}\n")
    out = sweep(path, *(["--dry-run"] if dry_run else []))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert ("cannot create the runs' folders" if problem == "run_root_is_a_file" else "shorten the variant names") in out.stderr
    assert "start" not in out.stdout and not (tmp_path / "runs").exists()


def test_a_run_that_cannot_start_stops_the_sweep_and_the_runs_still_going(module, tmp_path):
    """A start that fails after the checks (the disk filled, the folder went away) must not
    leave the runs already started training with no sweep to supervise them."""
    (tmp_path / "afile").write_text("")
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    going = module.Run("first", tmp_path / "first", tmp_path / "first.log", sleeper)
    unstartable = module.Run("second", tmp_path / "afile" / "second", tmp_path / "afile" / "second.log", sleeper)
    out = tmp_path / "out.txt"
    with out.open("w") as printed:
        scheduler = module.Scheduler([going, unstartable], parallel=2, out=printed)
        scheduler.run()
    assert scheduler.start_failure is not None and "second" in scheduler.start_failure, out.read_text()
    assert going.status == "stopped" and going.seconds < 30 and unstartable.status == "not run", out.read_text()
    assert not scheduler.active


def test_existing_runs_are_refused_resumed_or_skipped_and_no_log_is_lost(tmp_path):
    root = tmp_path / "runs"
    path = tmp_path / "resume.yaml"
    name = "CartPole-v1__base__s1"
    log = root / f"{name}.log"

    def write(steps):
        path.write_text(f"config: paac_classic\nenvs: [CartPole-v1]\nseeds: [1]\nsteps: {steps}\nrun_root: {root}\n"
                        "set: [logging.interval_s=0]\n")

    write(2000)  # an interrupted sweep: its run has a checkpoint short of the steps asked for next
    assert sweep(path).returncode == 0
    first = log.read_text()
    assert "done: 2,080 agent steps" in first  # whole rollouts: the first past 2,000

    write(4000)
    out = sweep(path)
    assert out.returncode == 2 and "exists already: --resume continues each" in out.stderr and str(root / name) in out.stderr
    assert log.read_text() == first  # refused before anything was started or written

    out = sweep(path, "--skip-existing")
    assert out.returncode == 0 and f"skipping {name}" in out.stdout and "# 0 runs" in out.stdout
    assert log.read_text() == first

    out = sweep(path, "--resume")
    assert out.returncode == 0, out.stdout + out.stderr
    text = log.read_text()
    assert text.startswith(first) and f"launch --resume {root / name} --steps 4000" in text
    assert "resuming" in text and "done: 4,000 agent steps" in text

    out = sweep(path, "--resume")  # a finished run stays as it is
    assert out.returncode == 0 and "already reached total_steps = 4000" in log.read_text()

    (root / "CartPole-v1__base__s1" / "checkpoints").rename(tmp_path / "moved")  # stopped before its first checkpoint
    out = sweep(path, "--resume")
    assert out.returncode == 2 and "exists with no checkpoint to resume from" in out.stderr, out.stderr


def test_final_return_reads_the_last_done_line(module, tmp_path):
    log = tmp_path / "x.log"
    log.write_text("step 1k | return 3.0\n\ndone: 300,000 agent steps in 12.7 s (23,553 SPS), 1573 episodes, "
                   "recent mean return 500.00; checkpoint runs/x/checkpoints/step_300000.pt\n")
    assert module.final_return(log) == 500.0
    log.write_text("done: 1,600 agent steps in 1.0 s (1,600 SPS), 3 episodes, recent mean return -20.50; checkpoint c\n"
                   "Traceback (most recent call last):\n")
    assert module.final_return(log) == -20.5
    log.write_text("parallel-rl launch: error: bad\n")
    assert module.final_return(log) is None
    assert module.final_return(tmp_path / "missing.log") is None



def test_a_failed_attempt_shows_no_return_from_an_earlier_attempts_log(module, tmp_path):
    """A run's log is appended to: a run started again that fails must not show (and add to
    the sweep's mean) the return an earlier attempt left in the same log."""
    log = tmp_path / "CartPole-v1__base__s1.log"
    log.write_text("done: 300,000 agent steps in 12.7 s (23,553 SPS), 1573 episodes, recent mean return 487.00; checkpoint c\n")
    run = module.Run("CartPole-v1__base__s1", tmp_path / "CartPole-v1__base__s1", log, [sys.executable, "-c", "raise SystemExit(1)"])
    out = tmp_path / "out.txt"
    with out.open("w") as printed:
        module.Scheduler([run], parallel=1, out=printed).run()
    assert run.status == "FAILED" and run.mean_return is None, out.read_text()
    assert "487.00" in log.read_text()  # the earlier attempt's log is kept
    assert "mean of the final returns" not in module.summary([run])

def test_expand_order_names_and_overrides(module):
    spec = module.parse_sweep({"config": "c", "envs": ["A-v1", "ALE/B-v5"], "seeds": [1, 2], "steps": 1e6,
                               "set": ["x=1"], "overrides": [{"name": "v", "set": ["y=2"]}], "run_root": "r"}, "s")
    runs = module.expand(spec, ["parallel-rl"])
    assert [r.name for r in runs] == ["A-v1__v__s1", "A-v1__v__s2", "ALE_B-v5__v__s1", "ALE_B-v5__v__s2"]
    assert runs[0].argv == ["parallel-rl", "launch", "--config", "c", "--env", "A-v1", "--seed", "1", "--steps", "1000000",
                            "--run-dir", str(Path("r") / "A-v1__v__s1"), "--set", "x=1", "--set", "y=2"]
    assert runs[0].log == Path("r") / "A-v1__v__s1.log"


@pytest.mark.parametrize("path", sorted((ROOT / "launch" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_expands_to_valid_launches(module, path):
    """No sweep in launch/ is dead: each of its runs parses as `parallel-rl launch` and
    resolves to a valid configuration for its env (the recipes and keys it names exist)."""
    from parallel_rl.cli import _flags, build_parser
    from parallel_rl.config import build_config

    runs = module.expand(module.load_sweep(path), ["parallel-rl"])
    assert runs
    for run in runs:
        args = build_parser().parse_args(run.argv[1:])
        cfg = build_config(args.config, _flags(args), args.overrides)
        assert cfg.env.id == run.argv[run.argv.index("--env") + 1]
