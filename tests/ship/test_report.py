"""`parallel-rl report`: curves and a score table from real runs; grouping and bands on made-up ones."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from parallel_rl.cli import main
from parallel_rl.report import (
    Group,
    Run,
    group_runs,
    load_references,
    load_run,
    mean_and_band,
    reference_for,
)


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "parallel_rl.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def logged_final_score(run_dir):
    """A run's final score recomputed from its events: mean return of the episodes of the last 10% of steps."""
    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    accumulator.Reload()
    events = accumulator.Scalars("episodes/return")
    last = events[-1].step
    return float(np.mean([e.value for e in events if e.step >= 0.9 * last])), [e.value for e in events]


def table_rows(markdown):
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0] not in ("env", "---"):
            rows[cells[0], cells[1]] = cells[2:]
    return rows


def test_report_on_cartpole_runs(cartpole_runs, tmp_path):
    out_dir = tmp_path / "report"
    runs = [cartpole_runs[name][0] for name in ("paac_s1", "paac_s2", "impala_s1")]
    out = cli("report", *runs, "--out", out_dir)
    assert out.returncode == 0, out.stderr

    png = out_dir / "CartPole-v1.png"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (700, 450)
        assert len(image.convert("L").getcolors(maxcolors=1 << 16)) > 10  # something was drawn

    markdown = (out_dir / "report.md").read_text()
    assert "![CartPole-v1](CartPole-v1.png)" in markdown
    rows = table_rows(markdown)
    assert set(rows) == {("CartPole-v1", "paac"), ("CartPole-v1", "impala")}
    variant, seeds, steps, score = rows["CartPole-v1", "paac"]
    assert (variant, seeds, steps) == ("-", "2", "4,000")
    mean, std = map(float, re.fullmatch(r"(-?\d+\.\d+) ± (\d+\.\d+)", score).groups())
    finals = [logged_final_score(run)[0] for run in runs[:2]]
    assert mean == pytest.approx(np.mean(finals), abs=0.006)
    assert std == pytest.approx(np.std(finals, ddof=1), abs=0.006)
    variant, seeds, steps, score = rows["CartPole-v1", "impala"]
    assert (variant, seeds, steps) == ("-", "1", "4,000")
    impala_final, _ = logged_final_score(runs[2])
    assert float(score) == pytest.approx(impala_final, abs=0.006)
    assert markdown.count("CartPole-v1") >= 3 and out.stdout.startswith("final return")


def test_report_finds_runs_below_a_folder_and_plots_wall_clock(cartpole_runs, tmp_path, capsys):
    root = cartpole_runs["paac_s1"][0].parent
    assert main(["report", str(root), "--out", str(tmp_path / "time"), "--x", "time"]) == 0
    assert "| CartPole-v1 | paac | - | 2 | 4,000 |" in capsys.readouterr().out
    with Image.open(tmp_path / "time" / "CartPole-v1.png") as image:
        image.verify()


@pytest.mark.parametrize(("make", "needle"), [
    (lambda tmp: tmp / "missing", "is not a folder"),
    (lambda tmp: tmp, "holds no run directory"),
])
def test_bad_report_input_exits_2(tmp_path, capsys, make, needle):
    assert main(["report", str(make(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_out_folder_that_cannot_be_written_exits_2_before_plotting(cartpole_runs, capsys):
    assert main(["report", str(cartpole_runs["paac_s1"][0]), "--out", "/proc"]) == 2
    err = capsys.readouterr().err
    assert "--out '/proc': a file cannot be written in '/proc'" in err and "Traceback" not in err, err


def test_bad_x_axis_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path), "--x", "frames"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "'frames'" in err and "steps" in err


def made_up_run(name, seed, **changes):
    config = {"env.id": "Pong-v5", "algo.name": "paac", "seed": seed, "algo.gamma": 0.99, "logging.run_root": name,
              "checkpoint.keep_last": seed, **changes}
    steps = np.array([100.0, 200.0])
    return Run(Path(name), config, steps, steps / 100, np.array([0.0, 1.0]))


def test_variants_are_the_keys_that_differ_besides_seed_logging_and_checkpoints():
    runs = [
        made_up_run("a", 1), made_up_run("b", 2),
        made_up_run("c", 1, **{"algo.gamma": 0.9}), made_up_run("d", 2, **{"algo.gamma": 0.9}),
        made_up_run("e", 1, **{"algo.name": "impala"}),
        made_up_run("f", 1, **{"env.id": "Breakout-v5", "algo.gamma": 0.5}),
    ]
    groups = {(g.env, g.algo, g.variant): [r.path.name for r in g.runs] for g in group_runs(runs)}
    assert groups == {
        ("Breakout-v5", "paac", ""): ["f"],
        ("Pong-v5", "impala", ""): ["e"],
        ("Pong-v5", "paac", "algo.gamma=0.9"): ["c", "d"],
        ("Pong-v5", "paac", "algo.gamma=0.99"): ["a", "b"],
    }
    assert Group("Pong-v5", "paac", "algo.gamma=0.9", runs[2:4]).label == "paac [algo.gamma=0.9]"


def test_bootstrap_band_holds_the_mean_within_the_runs():
    rng = np.random.default_rng(0)
    curves = np.array([[0.0, 1.0, 2.0], [2.0, 3.0, 2.0], [4.0, 5.0, 2.0]])
    mean, low, high = mean_and_band(curves, rng)
    np.testing.assert_allclose(mean, [2.0, 3.0, 2.0])
    assert np.all(curves.min(0) <= low) and np.all(low < mean + 1e-12) and np.all(mean <= high + 1e-12)
    assert np.all(high <= curves.max(0))
    assert low[2] == high[2] == 2.0  # no spread, no band
    assert low[0] < 1.5 and high[0] > 2.5  # a real spread gives a real band
    single = mean_and_band(curves[:1], rng)
    assert all(np.array_equal(part, curves[0]) for part in single)


def test_curves_have_a_point_per_episode_smoothed_over_a_twentieth_of_them(cartpole_runs):
    run_dir, stdout = cartpole_runs["paac_s1"]
    episodes = int(re.search(r"([\d,]+) episodes", stdout).group(1).replace(",", ""))
    run = load_run(run_dir)
    assert run.per_episode and len(run.returns) == episodes >= 100  # every episode, not a mean per write
    assert np.all(np.diff(run.steps) >= 0)
    window = len(run.returns) // 20
    assert run.smoothed[-1] == pytest.approx(run.returns[-window:].mean())
    assert run.smoothed[0] == run.returns[0]  # a trailing mean: the first point is the first episode


def test_paper_report_puts_the_reference_beside_the_final_score(cartpole_runs, tmp_path):
    out = cli("report", cartpole_runs["paac_s1"][0], "--out", tmp_path / "paper", "--paper")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("| CartPole-v1"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[6:] == ["475", "-", "Gymnasium's CartPole-v1 reward_threshold (solved); 500 is the maximum"]
    assert "| reference | reference steps | source |" in (tmp_path / "paper" / "report.md").read_text()


def test_the_most_specific_reference_row_wins():
    references = load_references()
    simba = Group("Humanoid-v4", "sac", "", [made_up_run("a", 1, **{"env.id": "Humanoid-v4", "algo.name": "sac",
                                                                     "model.encoder": "simbav2"})])
    plain = Group("Humanoid-v4", "sac", "", [made_up_run("b", 1, **{"env.id": "Humanoid-v4", "algo.name": "sac",
                                                                     "model.encoder": "mlp"})])
    assert reference_for(simba, references).score == 10546.0 and "SimbaV2" in reference_for(simba, references).source
    assert reference_for(plain, references).score == 4826.0
    assert reference_for(Group("Pong-v5", "qrdqn", "", [made_up_run("c", 1, **{"algo.name": "qrdqn"})]), references) is None
    assert reference_for(Group("Pong-v5", "paac", "", [made_up_run("d", 1)]), references).steps == 15_000_000  # global steps


def test_a_reference_of_another_version_of_the_env_applies_and_says_so():
    """The papers report MuJoCo -v4, the sweeps run -v5: the -v4 figure is shown, and its
    source names both versions; an exact row would win."""
    references = load_references()
    on_v5 = Group("Humanoid-v5", "sac", "", [made_up_run("a", 1, **{"env.id": "Humanoid-v5", "algo.name": "sac",
                                                                     "model.encoder": "simbav2"})])
    found = reference_for(on_v5, references)
    assert found.score == 10546.0 and "reported on Humanoid-v4; this run is on Humanoid-v5" in found.source
    exact = [*references, {"env": "Humanoid-v5", "algo": "sac", "score": 1.0, "steps": None, "source": "exact",
                           "where": {"model.encoder": "simbav2"}}]
    assert reference_for(on_v5, exact).source == "exact"


def test_a_resume_after_a_crash_replaces_the_steps_logged_after_its_checkpoint(tmp_path):
    """A killed run logged returns of 10 up to step 1000; its newest checkpoint is at 500, so
    the resume logs steps 600 to 1000 again (returns of 20). The report reads each step
    once, the resumed run's, and nothing the killed run logged up to the checkpoint is lost."""
    from parallel_rl.config import build_config, save_yaml
    from parallel_rl.metrics import Metrics

    run = tmp_path / "run"
    run.mkdir()
    save_yaml(build_config("paac_classic"), run / "config.yaml")
    killed = Metrics(run / "tb", total_steps=1000, interval_s=0.0, return_window=20, console=False)
    for step in range(100, 1001, 100):
        killed.add_episodes([10.0], [10], step)
        killed.write(step, {})
    killed.writer.flush()  # killed after these reached the disk, before any close
    resumed = Metrics(run / "tb", total_steps=1000, interval_s=0.0, return_window=20, console=False, start_step=500)
    for step in range(600, 1001, 100):
        resumed.add_episodes([20.0], [10], step)
        resumed.write(step, {})
    resumed.close()
    loaded = load_run(run)
    assert list(loaded.steps) == list(range(100, 1001, 100))
    assert list(loaded.returns) == [10.0] * 5 + [20.0] * 5
    assert loaded.final_score == 20.0


def test_episodes_finished_before_a_checkpoint_are_on_disk_when_it_is_saved(tmp_path):
    """Between two writes, finished episodes wait in memory; the runner persists them before
    it saves a checkpoint, so a crash right after loses none the checkpoint counts."""
    from parallel_rl.metrics import EPISODE_RETURN_TAG, Metrics

    metrics = Metrics(tmp_path / "tb", total_steps=1000, interval_s=3600.0, return_window=20, console=False)
    metrics.add_episodes([3.0, 4.0], [10, 12], 200)
    metrics.persist_episodes()
    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    assert [(e.step, e.value) for e in accumulator.Scalars(EPISODE_RETURN_TAG)] == [(200, 3.0), (200, 4.0)]
    metrics.write(300, {})  # the next write averages them, and does not write them again
    metrics.close()
    accumulator.Reload()
    assert len(accumulator.Scalars(EPISODE_RETURN_TAG)) == 2 and accumulator.Scalars("charts/episodic_return")[0].value == 3.5


def test_a_group_names_a_repeated_seed_and_a_run_that_stopped_short():
    from parallel_rl.report import pooling_warnings

    even = group_runs([made_up_run("a", 1), made_up_run("b", 2)])[0]
    assert pooling_warnings(even) == []
    relaunched = group_runs([made_up_run("a", 1), made_up_run("b", 1), made_up_run("c", 2)])[0]
    assert any("seed 1 appears in more than one run" in w for w in pooling_warnings(relaunched))
    short = made_up_run("s", 3)
    short.steps = np.array([50.0, 100.0])
    stopped = group_runs([made_up_run("a", 1), short])[0]
    assert pooling_warnings(stopped) == ["Pong-v5 / paac: s ends at 100 steps, against 200 for the longest: "
                                         "its final score is taken earlier in learning."]
