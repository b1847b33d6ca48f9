"""Human-normalised scores, IQM and stratified bootstrap intervals against hand-computed
values, and benchmarks/iqm.py on TensorBoard logs written here."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from parallel_rl.config import build_config, save_yaml
from parallel_rl.stats import atari_game, human_normalized, iqm, stratified_bootstrap_ci


def test_human_normalised_scores():
    assert human_normalized(-20.7, "Pong-v5") == pytest.approx(0.0)  # random play
    assert human_normalized(14.6, "Pong-v5") == pytest.approx(1.0)  # the human tester
    assert human_normalized([1.7, 30.5, 59.3], "Breakout-v5").tolist() == pytest.approx([0.0, 1.0, 2.0])
    assert atari_game("MsPacman-v5") == "MsPacman"
    with pytest.raises(KeyError, match="CartPole-v1"):
        atari_game("CartPole-v1")


def test_iqm_drops_a_quarter_from_each_end():
    assert iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm([100, 1, 2, 3, -100]) == pytest.approx(2.0)  # n = 5: one cut from each end
    assert iqm([[1, 2], [3, 4]]) == pytest.approx(2.5)  # all values pooled
    assert iqm([5.0]) == 5.0
    with pytest.raises(ValueError):
        iqm([])


def test_bootstrap_resamples_within_each_task():
    # stratified: every replicate keeps 3 runs of each task, so the mean is always 0.5;
    # resampling the 6 runs pooled would move it
    point, lower, upper = stratified_bootstrap_ci({"a": [0, 0, 0], "b": [1, 1, 1]}, statistic=np.mean, reps=200)
    assert (point, lower, upper) == (0.5, 0.5, 0.5)
    point, lower, upper = stratified_bootstrap_ci({"a": [0, 1, 2, 3], "b": [10, 11, 12, 13]}, reps=500, seed=1)
    assert point == pytest.approx(iqm([0, 1, 2, 3, 10, 11, 12, 13]))
    assert lower < point < upper
    assert stratified_bootstrap_ci({"a": [0, 1, 2, 3]}, reps=500, seed=1) == stratified_bootstrap_ci({"a": [0, 1, 2, 3]}, reps=500, seed=1)


def _fake_run(root: Path, env: str, batch: int, seed: int, returns: list[float], recipe: str = "qrdqn_atari") -> None:
    run = root / f"{env}__batch{batch}__s{seed}"
    run.mkdir(parents=True)
    save_yaml(build_config(recipe, {"env.id": env, "seed": seed}, [f"replay.minibatch_size={batch}"]), run / "config.yaml")
    writer = SummaryWriter(str(run / "tb"))
    for i, value in enumerate(returns):
        writer.add_scalar("charts/episodic_return", value, (i + 1) * 1000)
    writer.close()


def test_iqm_script_reads_runs_and_groups_variants(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("iqm_script", Path(__file__).parents[1] / "benchmarks" / "iqm.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # final score = mean over the last 10% of steps: the last two of 10 points here
    for seed, (pong, breakout) in enumerate([(-20.7, 1.7), (14.6, 30.5), (-3.05, 16.1)], start=1):
        _fake_run(tmp_path, "Pong-v5", 32, seed, [-21.0] * 8 + [pong] * 2)
        _fake_run(tmp_path, "Breakout-v5", 32, seed, [0.0] * 8 + [breakout] * 2)
        _fake_run(tmp_path, "Pong-v5", 8, seed, [-21.0] * 8 + [14.6] * 2)
        _fake_run(tmp_path, "Breakout-v5", 8, seed, [0.0] * 8 + [30.5] * 2)
    assert script.main([str(tmp_path), "--json", "--reps", "200"]) == 0
    rows = {row["variant"]: row for row in json.loads(capsys.readouterr().out)}
    small, default = rows["qrdqn [replay.minibatch_size=8]"], rows["qrdqn [replay.minibatch_size=32]"]
    assert (small["games"], small["runs"]) == (2, 6)
    assert small["iqm"] == pytest.approx(1.0) and small["ci"] == pytest.approx([1.0, 1.0])
    # scores 0, 1, 0.5 in both games: IQM of (0, 0, .5, .5, 1, 1) = mean(0, .5, .5, 1) = 0.5
    assert default["iqm"] == pytest.approx(0.5)
    assert default["mean_per_game"] == pytest.approx({"Breakout-v5": 0.5, "Pong-v5": 0.5})
    assert script.main([str(tmp_path / "nothing-here")]) == 2


def test_iqm_script_keeps_two_ids_of_one_game_apart_and_counts_a_run_named_twice_once(tmp_path, capsys):
    """Pong-v5 and Pong-v4 are two tasks of one variant, neither overwriting the other; a run
    reached through two paths is one run."""
    spec = importlib.util.spec_from_file_location("iqm_script", Path(__file__).parents[1] / "benchmarks" / "iqm.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for seed in (1, 2):
        _fake_run(tmp_path, "Pong-v5", 32, seed, [-21.0] * 8 + [11.0] * 2)
        _fake_run(tmp_path, "Pong-v4", 32, seed, [-21.0] * 10)
    some_run = next(p.parent for p in tmp_path.rglob("config.yaml"))
    spelt_otherwise = some_run / ".." / some_run.name
    assert script.main([str(tmp_path), str(spelt_otherwise), "--json", "--reps", "200"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["raw_iqm_per_task"]["Pong-v5"]["runs"] == 2 and row["raw_iqm_per_task"]["Pong-v4"]["runs"] == 2
    assert row["raw_iqm_per_task"]["Pong-v5"]["iqm"] == pytest.approx(11.0)
    assert row["raw_iqm_per_task"]["Pong-v4"]["iqm"] == pytest.approx(-21.0)


def test_classic_control_scores_are_normalised_from_random_play_to_solved():
    from parallel_rl.stats import normalized_score

    assert normalized_score(22.2, "CartPole-v1") == ("CartPole-v1", pytest.approx(0.0))
    assert normalized_score(475.0, "CartPole-v1") == ("CartPole-v1", pytest.approx(1.0))
    assert normalized_score(-100.0, "Acrobot-v1") == ("Acrobot-v1", pytest.approx(1.0))
    assert normalized_score(-299.55, "Acrobot-v1") == ("Acrobot-v1", pytest.approx(0.5))
    assert normalized_score(14.6, "Pong-v5") == ("Pong", pytest.approx(1.0))
    with pytest.raises(KeyError, match="MountainCar-v0.*CartPole-v1, Acrobot-v1"):
        normalized_score(0.0, "MountainCar-v0")


def test_iqm_script_reports_classic_control_runs_and_each_tasks_raw_iqm(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("iqm_script", Path(__file__).parents[1] / "benchmarks" / "iqm.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cartpole = [500.0, 475.0, 22.2, 475.0, 475.0]  # IQM over five: cut one from each end -> 475
    for seed, final in enumerate(cartpole, start=1):
        _fake_run(tmp_path, "CartPole-v1", 8, seed, [20.0] * 8 + [final] * 2, recipe="qrdqn_classic")
        _fake_run(tmp_path, "Acrobot-v1", 8, seed, [-500.0] * 8 + [-100.0] * 2, recipe="qrdqn_classic")
    _fake_run(tmp_path, "MountainCar-v0", 8, 1, [-200.0] * 10, recipe="qrdqn_classic")
    assert script.main([str(tmp_path), "--json", "--reps", "200"]) == 0
    captured = capsys.readouterr()
    (row,) = json.loads(captured.out)
    assert (row["games"], row["runs"]) == (2, 10)
    assert row["raw_iqm_per_task"]["CartPole-v1"]["iqm"] == pytest.approx(475.0)
    assert row["raw_iqm_per_task"]["Acrobot-v1"]["iqm"] == pytest.approx(-100.0)
    assert row["raw_iqm_per_task"]["Acrobot-v1"]["ci"] == pytest.approx([-100.0, -100.0])
    assert row["iqm"] == pytest.approx(1.0)  # normalised: all 1 but one 0 and one 1.06, both cut
    assert "MountainCar-v0" in captured.err and "only its raw-score IQM" in captured.err
    assert row["raw_iqm_per_task"]["MountainCar-v0"]["iqm"] == pytest.approx(-200.0)
    assert script.main([str(tmp_path)]) == 0
    assert "IQM final score" in capsys.readouterr().out
