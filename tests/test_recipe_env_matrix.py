"""Every recipe against one environment of each family, through the CLI, with a tiny budget.

The expected outcome of each cell is in ``recipe_env_matrix.md`` beside this file: `train`
cells must log at least one gradient update, `refuse` cells must exit with code 2 and one
paragraph that names the mismatch and the fix. No cell may raise (a traceback for a user).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from parallel_rl import cli
from parallel_rl.config import CONFIG_DIR, build_config

TABLE = Path(__file__).with_name("recipe_env_matrix.md")
GYMNASIUM_BACKEND = {"Blackjack-v1"}  # EnvPool's has a Box observation; gymnasium's is the Tuple one
NUM_ENVS = 2


def _read_table() -> tuple[list[str], dict[str, dict[str, str]]]:
    rows = [ln for ln in TABLE.read_text().splitlines() if ln.startswith("|") and not ln.startswith("|---")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    envs = header[1:]
    table = {}
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        table[cells[0]] = dict(zip(envs, cells[1:], strict=True))
    return envs, table


ENVS, EXPECTED = _read_table()


def test_table_covers_every_recipe_and_only_known_outcomes():
    assert sorted(EXPECTED) == sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {v for row in EXPECTED.values() for v in row.values()} <= {"train", "refuse"}


def tiny_budget(recipe: str) -> list[str]:
    """Overrides so that one gradient update happens within a few hundred agent steps."""
    cfg = build_config(recipe)
    batch = NUM_ENVS * cfg.algo.rollout_length
    sets = ["checkpoint.interval_steps=0", "logging.interval_s=0"]
    if cfg.algo.name in ("ppo", "pqn"):
        sets += ["algo.update_epochs=1", "algo.num_minibatches=1"]
    if cfg.optim.name == "kron":  # diagonal factors past 512: triangular 3136-wide ones cost minutes on CPU
        sets += ["optim.kron_max_size_triangular=512"]
    steps = batch
    if cfg.algo.name in ("sac", "qrdqn"):
        warmup = 2 * batch
        # utd 0.125: two or three gradient steps, not the recipes' dozens
        sets += [f"algo.warmup_steps={warmup}", "replay.capacity=512", "replay.minibatch_size=8", "algo.utd_ratio=0.125"]
        steps = warmup + 2 * batch
    return ["--actors", str(NUM_ENVS), "--actor-procs", "0", "--steps", str(steps)] + [a for s in sets for a in ("--set", s)]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_recipe_on_every_env_family(recipe, tmp_path, capsys, read_scalars):
    failures = []
    for env in ENVS:
        run_dir = tmp_path / env
        argv = ["launch", "--config", recipe, "--env", env, "--run-dir", str(run_dir), *tiny_budget(recipe)]
        if env in GYMNASIUM_BACKEND:
            argv += ["--set", "env.backend=gymnasium"]
        code = cli.main(argv)  # an exception here is a traceback the user would see: the test fails on it
        out, err = capsys.readouterr()
        if EXPECTED[recipe][env] == "train":
            tags = read_scalars(run_dir) if code == 0 else {}
            if code != 0 or not any(t.startswith("losses/") for t in tags):
                failures.append(f"{env}: expected training, got exit {code}, tags {sorted(tags)[:5]}, stderr {err[-400:]!r}")
        else:
            message = err.strip()
            one_paragraph = message.startswith("parallel-rl launch: error: ") and "\n" not in message
            names_a_fix = re.search(r"--config \w+|--set [\w.]+=", message) is not None
            if code != 2 or not one_paragraph or not names_a_fix or run_dir.exists():
                failures.append(f"{env}: expected a refusal (exit 2, one paragraph naming the fix, no run directory), "
                                f"got exit {code}: {message[-400:]!r}")
    assert not failures, f"{recipe}:\n" + "\n".join(failures)
