"""The scripts behind docs/benchmarks.md run and print their tables (tiny sizes; no timing is asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name, *args):
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(("name", "args", "rows"), [
    # Kron's triangular preconditioners for the Nature CNN's 3136-wide layer: minutes on 2 cores
    pytest.param("kron_cost.py", ["--width", "32", "--seconds", "0.1", "--repeats", "1"], ["| adam |", "| kron |"],
                 marks=pytest.mark.slow),
    pytest.param("qrdqn_learner.py", ["--minibatches", "8", "--seconds", "0.2", "--repeats", "1"], ["| uniform |", "| 8 |"],
                 marks=pytest.mark.slow),
    pytest.param("sac_throughput.py", ["--only", "learner", "--learner-steps", "1", "--repeats", "1"],
                 ["| SimbaV2 SAC on cpu"], marks=pytest.mark.slow),
    pytest.param("compile_cost.py", ["--recipes", "paac_classic", "--seconds", "0.5", "--rounds", "1"],
                 ["| paac_classic |"], marks=pytest.mark.slow),
    pytest.param("layouts.py", ["--recipes", "paac_classic", "--seconds", "0.5", "--repeats", "1"],
                 ["| paac_classic | **default** (K = 0", "| paac_classic | K = 2,"], marks=pytest.mark.slow),
    pytest.param("ppo_profile.py", ["--only", "ours", "--steps", "2048"], ["| act forward |", "| backward |"],
                 marks=pytest.mark.slow),
    pytest.param("space_to_depth.py", ["--repeats", "1"], ["| 8x8 stride 4 (plain) |", "| space-to-depth, 2x2 over 64 channels |"],
                 marks=pytest.mark.slow),
    pytest.param("amp_cpu.py", ["--only", "networks", "--eager-only", "--rounds", "1", "--seconds", "0.05"],
                 ["bf16 units (AVX512_BF16 or AMX", "| ppo_atari | no | update | 256 |", "| paac_atari | no | inference | 8 |"],
                 marks=pytest.mark.slow),
    pytest.param("ranks.py", ["--recipes", "paac_classic", "--steps", "4000", "--repeats", "1"],
                 ["| paac_classic | 32 | 1 |", "| paac_classic | 32 | 2 |"], marks=pytest.mark.slow),
    pytest.param("optimizer_kernel_cpu.py", ["--recipes", "qrdqn_classic", "--seconds", "1", "--rounds", "1"],
                 ["| recipe | optimizer | default", "| qrdqn_classic | adam | "], marks=pytest.mark.slow),
    pytest.param("transport_ab.py", [".", "--groups-bare", "--thread-cpu", "--rounds", "1", "--seconds", "1", "--actors", "8"],
                 ["| raw stepping, . (", "| the actor's env groups stepped bare, alternately", "| pipeline, . (",
                  "  raw .: ", "the stepping process Python thread", "; the machine idle"],
                 marks=pytest.mark.slow),
    pytest.param("acting_call.py", [".", "--recipe", "transport_probe", "--recipe", "paac_classic", "--rounds", "1", "--calls", "20"],
                 ["| transport_probe | 128 | ", "| paac_classic | 32 | "], marks=pytest.mark.slow),
    pytest.param("training_ab.py", [".", "--case", "paac_classic:actors.num_envs=8,seed=2", "--rounds", "1", "--seconds", "0.5"],
                 ["round 1, paac_classic:actors.num_envs=8,seed=2: . ", "| paac_classic actors.num_envs=8 seed=2 | "],
                 marks=pytest.mark.slow),
    pytest.param("send_wakeup.py", ["--steps", "3", "--envs", "4", "--threads", "1"],
                 ["| envpool | 4 | 1 | SCHED_OTHER | ", "| envpool | 4 | 1 | SCHED_BATCH | "], marks=pytest.mark.slow),
])
def test_benchmark_script_prints_its_table(name, args, rows):
    out = script(name, *args)
    assert out.returncode == 0, out.stderr
    for row in rows:
        assert row in out.stdout, out.stdout


@pytest.mark.parametrize(("name", "flag"), [("kron_cost.py", "--repeats"), ("qrdqn_learner.py", "--repeats"), ("ranks.py", "--repeats"),
                                           ("space_to_depth.py", "--repeats"), ("amp_cpu.py", "--rounds"),
                                           ("optimizer_kernel_cpu.py", "--rounds")])
def test_benchmark_script_refuses_bad_arguments(name, flag):
    out = script(name, flag, "0")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and flag in out.stderr


@pytest.mark.parametrize(("name", "args", "named"), [
    ("acting_call.py", [".", "--recipe", "nope"], "'nope'"), ("acting_call.py", [".", "--rounds", "0"], "--rounds (0)"),
    ("training_ab.py", [".", "--case", "nope:seed=1"], "'nope'"), ("training_ab.py", [".", "--rounds", "0"], "--rounds (0)"),
    ("send_wakeup.py", ["--steps", "0"], "--steps (0)"),
    ("transport_ab.py", [".", "--rounds", "0"], "--rounds 0"), ("compile_cost.py", ["--rounds", "0"], "--rounds 0"),
    ("sac_throughput.py", ["--repeats", "0"], "--repeats 0"), ("layouts.py", ["--seconds", "0"], "--seconds 0.0"),
    ("peer_ppo.py", ["--repeats", "0"], "--repeats 0"), ("ranks.py", ["--recipes", "nope"], "--recipes nope"),
    ("gpu_check.py", ["--smoke", "--out", __file__], f"--out {__file__}: File exists"),
    ("layouts.py", ["--recipes", "nosuch"], "nosuch"), ("compile_cost.py", ["--recipes", "nope"], "nope"),
    ("compile_cost.py", ["--set", "nope=1"], "nope"), ("transport_ab.py", [".", "--env", "Nope-v0"], "Nope-v0"),
    ("compile_cost.py", ["--set", "perf.compile=true"], "--set perf.compile=true"),
    ("peer_ppo.py", ["--peer", "/nonexistent/peer.py"], "/nonexistent/peer.py"),
])
def test_benchmark_script_refuses_a_bad_recipe_or_count(name, args, named):
    out = script(name, *args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and named in out.stderr


def test_amp_benchmark_refuses_network_cells_for_pqn_alone():
    """The network cells time an actor-critic's update: PQN alone would print an empty table."""
    out = script("amp_cpu.py", "--configs", "pqn_atari", "--only", "networks")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "--configs pqn_atari" in out.stderr and "ppo_atari" in out.stderr


@pytest.mark.slow  # about 40 s on 2 cores
def test_gpu_check_smoke_runs_every_section_where_envpool_is_absent(tmp_path):
    """The GPU machine has no EnvPool wheel (Python 3.12): with envpool unimportable, Atari
    steps on ALE's vector env and the classic tasks on gymnasium, and every section passes."""
    hidden = tmp_path / "no_envpool"
    hidden.mkdir()
    (hidden / "envpool.py").write_text("raise ImportError('EnvPool is absent on this machine')\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(hidden), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = strict_json((out / "gpu_check.json").read_text())
    assert set(report["sections"]) == {"algorithms", "switches", "checkpoint", "bench", "nature_cnn", "ppo_8_envs", "ppo_pong",
                                         "ranks"}
    assert all(section["ok"] for section in report["sections"].values())
    sections = {name: section["result"] for name, section in report["sections"].items()}
    assert all(run["finite"] and run["updates"] >= 2 for run in sections["algorithms"].values())
    layouts = sections["bench"]["layouts"]
    assert set(layouts) == {"0", "1"}
    for layout in layouts.values():
        assert layout["backend"] == "ale" and layout["raw_sps_median"] > 0 and layout["train_sps_median"] > 0
    # the two layouts' actors have 2 threads between them: raw stepping measured once, by the first
    assert layouts["1"]["raw_from_another_layout"] and not layouts["0"]["raw_from_another_layout"]
    assert layouts["1"]["raw_sps"] == layouts["0"]["raw_sps"] and layouts["1"]["phase_wall_s"]["raw"] == []
    assert all(row["inference_obs_per_s"] > 0 and row["update_obs_per_s"] > 0 for row in sections["nature_cnn"]["rows"])
    assert all(sections[name]["agent_steps"] > 0 for name in ("ppo_8_envs", "ppo_pong"))
    assert set(sections["switches"]["switches"]) == {"fused", "bf16", "bf16, policy lag 2"} and sections["switches"]["eager_losses"]
    assert [row["ranks"] for row in sections["ranks"]["rows"]] == [1, 2] and all(row["sps"] > 0 for row in sections["ranks"]["rows"])
    assert "| eager | 8 |" in (out / "gpu_check.md").read_text()


@pytest.mark.slow  # a whole launch process and a 20-episode evaluation
def test_cartpole_solve_times_the_whole_launch_and_says_when_a_seed_did_not_solve():
    out = script("cartpole_solve.py", "--seeds", "1", "--set", "total_steps=2000")
    assert out.returncode == 1, out.stderr  # 2,000 steps do not solve CartPole: the table says so
    assert "| 1 |" in out.stdout and "| **no** |" in out.stdout and "0 of 1 seeds solved" in out.stdout, out.stdout
    side_by_side = script("cartpole_solve.py", "--seeds", "1", "2", "--set", "total_steps=2000", "--against", "total_steps=1600",
                          "--json")
    rows = json.loads(side_by_side.stdout)
    assert [r["seed"] for r in rows["recipe"]] == [r["seed"] for r in rows["against"]] == [1, 2]
    assert not any(r["solved"] for r in rows["recipe"] + rows["against"]) and side_by_side.returncode == 1
    refused = script("cartpole_solve.py", "--seeds", "1", "--set", "optim.lr=-1")
    assert refused.returncode == 2 and "optim.lr" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.slow  # three short CartPole runs
def test_a_replayed_stretch_takes_the_same_updates_twice_and_a_placebo_changes_them(tmp_path):
    """What replay_updates.py rests on: resumed from one checkpoint with one env seed, an
    inline run takes the same float trajectory every time."""
    run = tmp_path / "run"
    launch = [sys.executable, "-m", "parallel_rl", "launch", "--config", "paac_classic", "--steps", "640", "--run-dir", str(run)]
    assert subprocess.run(launch, capture_output=True, text=True, timeout=300).returncode == 0
    records = []
    for name, extra in (("a", []), ("b", []), ("placebo", ["--perturb-at", "1120"])):
        copy = tmp_path / name
        (copy / "checkpoints").mkdir(parents=True)
        (copy / "config.yaml").write_bytes((run / "config.yaml").read_bytes())
        (copy / "checkpoints" / "step_640.pt").write_bytes((run / "checkpoints" / "step_640.pt").read_bytes())
        out = script("replay_updates.py", str(copy), "--steps", "2400", "--seed", "5", "--record-from", "0",
                     "--record-to", "2400", "--out", str(tmp_path / f"{name}.json"), *extra)
        assert out.returncode == 0, out.stderr
        records.append(json.loads((tmp_path / f"{name}.json").read_text()))
    first, second, placebo = ([(r["step"], r["v_before"], r["losses/value"]) for r in rs] for rs in records)
    assert len(first) == 11 and first == second  # 160 agent steps an update, from 640 to 2400
    assert placebo[:2] == first[:2] and all(p != f for p, f in zip(placebo[2:], first[2:], strict=True))  # from the perturbed update on


def test_thread_cpu_shares_come_from_the_middle_half_of_the_measurement(monkeypatch):
    """``transport_ab.py --thread-cpu``'s arithmetic on made-up /proc samples every 0.5 s: start-up
    (the learner busy building envs) until t = 1.75, the measurement until t = 5, then an exit that
    uses no CPU. With ``seconds`` = 4 the middle half is t = 2 to 4, clear of start-up."""
    import importlib.util

    monkeypatch.syspath_prepend(str(BENCHMARKS))  # its helpers beside it, as when it runs as a script
    spec = importlib.util.spec_from_file_location("transport_ab", BENCHMARKS / "transport_ab.py")
    transport_ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(transport_ab)
    hz = os.sysconf("SC_CLK_TCK")

    def cpu(t, start_up, measuring):  # cumulative seconds of CPU at a rate per phase
        return start_up * min(t, 1.75) + measuring * max(0.0, min(t, 5.0) - 1.75)

    samples = [(t, {"idle": round(hz * 0.5 * t),  # the machine idle half a core throughout
                    ("learner", True, 1): round(hz * cpu(t, 1.0, 0.1)),
                    ("actor process 2", False, 3): round(hz * cpu(t, 0.0, 0.9)),
                    ("actor process 2", False, 4): round(hz * cpu(t, 0.0, 0.6))})
               for t in [0.5 * k for k in range(15)]]
    line = transport_ab.middle_half_shares(samples, seconds=4.0)
    assert line == ("actor process 2 other threads 150.0%, learner Python thread 10.0%; "
                    "the machine idle 50.0% of a core"), line


def strict_json(text: str):
    """``text`` parsed as JSON proper, which has no NaN or Infinity."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def load_gpu_check(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look their module up there
    spec.loader.exec_module(gpu_check)
    return gpu_check


def test_gpu_check_writes_strict_json_where_a_section_measured_nothing(monkeypatch, tmp_path):
    """A figure a section could not measure (updates/s of one update) is NaN in Python; the
    report's JSON holds null there, which strict readers accept."""
    gpu_check = load_gpu_check(monkeypatch)
    report = {"mode": "smoke", "machine": "test", "sections": {
        "ppo_pong": {"ok": True, "result": {"updates_per_s": float("nan"), "returns": [1.5, float("inf")]}, "seconds": 2.0}}}
    gpu_check.write_report(tmp_path, report)
    written = strict_json((tmp_path / "gpu_check.json").read_text())
    assert written["sections"]["ppo_pong"]["result"] == {"updates_per_s": None, "returns": [1.5, None]}
    assert "- updates_per_s: nan" in (tmp_path / "gpu_check.md").read_text()



def test_gpu_check_ranks_keeps_the_rows_measured_when_a_later_launch_runs_out_of_time(monkeypatch, tmp_path):
    """The 2-rank launch cut off at the section's deadline leaves the 1-rank row and says what
    was not measured; a launch that failed, or a first one out of time, fails the section."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # where gpu_check finds ranks.py, as when run as a script
    gpu_check = load_gpu_check(monkeypatch)
    import ranks

    calls = []

    def cell(recipe, count, steps, run_dir, extra, timeout_s):
        calls.append(count)
        if count == 2:
            raise ranks.CellTimedOut(f"{recipe} on 2 rank(s) ran past {timeout_s:.0f} s and was stopped")
        return 1000.0, 5.0

    monkeypatch.setattr(ranks, "run_cell", cell)
    result = gpu_check.section_ranks(gpu_check.SMOKE, tmp_path, seconds=60.0)
    assert calls == [1, 2] and [row["ranks"] for row in result["rows"]] == [1]
    assert len(result["not_measured"]) == 1 and "2 ranks" in result["not_measured"][0]
    report = {"mode": "smoke", "machine": "test", "sections": {"ranks": {"ok": True, "result": result, "seconds": 60.0}}}
    assert "- not measured: 2 ranks" in gpu_check.markdown(report)

    def failed(recipe, count, steps, run_dir, extra, timeout_s):
        raise ranks.CellFailed("exit 1")

    monkeypatch.setattr(ranks, "run_cell", failed)
    with pytest.raises(ranks.CellFailed):
        gpu_check.section_ranks(gpu_check.SMOKE, tmp_path, seconds=60.0)

def test_gpu_check_budget_skips_what_cannot_fit_and_stretches_the_last_section_into_what_is_left(monkeypatch):
    """The GPU check's budget on a made-up clock: a section starts only where the time left
    covers its own least need, and a stretching section keeps back what the later ones need."""
    gpu_check = load_gpu_check(monkeypatch)
    now = [0.0]
    budget = gpu_check.Budget(300.0, {"first": 50.0, "stretch": 20.0, "last": 60.0}, clock=lambda: now[0])
    assert budget.allows("first") and budget.spare("first") == 300.0 - 80.0
    now[0] = 250.0
    assert budget.allows("first")  # its own 50 s are left, though not the later sections' too
    now[0] = 250.5
    assert not budget.allows("first")
    now[0] = 100.0
    assert budget.spare("stretch") == 200.0 - 60.0  # the last section's 60 s kept back
    now[0] = 250.0
    assert budget.spare("stretch") == 20.0  # never below its own need, though the last then may not fit
    assert not budget.allows("last") and budget.spare("last") == 60.0
    now[0] = 230.0
    assert budget.allows("last") and budget.spare("last") == 70.0
    full = gpu_check.FULL
    assert gpu_check.ppo_pong_seconds(full, 70.0) == 70.0 - gpu_check.PPO_PONG_START_UP_S
    assert gpu_check.ppo_pong_seconds(full, 1000.0) == full.pong_seconds == 180.0  # the 3 minutes at most
    assert gpu_check.ppo_pong_seconds(full, 0.0) == gpu_check.PPO_PONG_LEAST_S
    # the full check's least needs fit its budget, so on a machine as fast as the H200 nothing is skipped
    assert sum(full.needs_s.values()) <= full.budget_s <= 360.0 - 15.0


def test_gpu_check_records_the_sections_its_budget_leaves_no_time_for(tmp_path):
    """With a 1.5-s budget the smoke check runs its first section (its 1-s need is left) and
    records every later one as skipped, in the JSON, the markdown and the last line, exit 0."""
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--smoke", "--budget-s", "1.5", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    sections = json.loads((out / "gpu_check.json").read_text())["sections"]
    assert sections["algorithms"]["ok"] and "result" in sections["algorithms"]
    later = [name for name in sections if name != "algorithms"]
    assert later and all("skipped" in sections[name] and "result" not in sections[name] for name in later)
    assert "## ppo_pong: skipped" in (out / "gpu_check.md").read_text()
    assert "skipped for time: " + ", ".join(later) in result.stdout


@pytest.mark.parametrize("flag", ["--budget-s", "--pong-seconds"])
def test_gpu_check_refuses_a_budget_that_is_not_a_positive_number_of_seconds(tmp_path, flag):
    out = script("gpu_check.py", "--smoke", flag, "0", "--out", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{flag} must be a positive number of seconds, not 0.0" in out.stderr


def test_soak_growth_starts_after_start_up_and_totals_only_processes_sampled_throughout(capsys):
    """A sample taken during start-up is not the baseline, and an actor process present in
    only one of the two samples compared stays out of the total."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("soak", BENCHMARKS / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    start_up = (10.0, {"runner": 100, "actor 0": 50})
    baseline = (60.0, {"runner": 1000, "actor 0": 1000})
    latest = (120.0, {"runner": 1010, "actor 0": 1010, "actor 1": 5000})
    assert soak.print_growth([start_up, baseline, latest], steps=0, exit_code=0)
    out = capsys.readouterr().out
    assert "growth from minute 1.0 to minute 2.0" in out and "+1.00%  (within the 5% goal)" in out
    assert "actor 1" not in out
    assert not soak.print_growth([start_up, baseline], steps=0, exit_code=0)
    assert "nothing to compare" in capsys.readouterr().out


def test_side_by_side_scripts_give_each_contender_every_place_in_turn(monkeypatch):
    """Over as many rounds as contenders, each is measured once in every position, so steady
    drift of the machine favours none (two are reversed every other round)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from transport_ab import turn_order

    for contenders in (["a", "b"], ["peer", "x", "y"]):
        orders = [turn_order(contenders, r) for r in range(len(contenders))]
        assert all(sorted(order) == sorted(contenders) for order in orders)
        for place in range(len(contenders)):
            assert sorted(order[place] for order in orders) == sorted(contenders)
    assert turn_order(["a", "b"], 1) == ["b", "a"] and turn_order(["a", "b"], 2) == ["a", "b"]


def test_three_optimizer_kernels_each_take_every_place_in_turn(monkeypatch, capsys):
    """The kernel script's three contenders (Adam: default, foreach, fused) rotate, rather than
    reverse, so the middle place is not always the same kernel's."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import optimizer_kernel_cpu

    measured: list[str] = []
    monkeypatch.setattr(optimizer_kernel_cpu, "cell_config", lambda recipe, kernel: kernel)
    monkeypatch.setattr(optimizer_kernel_cpu, "train_sps", lambda kernel, seconds: measured.append(kernel) or 1.0)
    monkeypatch.setattr(sys, "argv", ["optimizer_kernel_cpu.py", "--recipes", "ppo_classic", "--rounds", "3"])
    optimizer_kernel_cpu.main()
    rounds = [measured[i:i + 3] for i in range(0, 9, 3)]
    for place in range(3):
        assert sorted(order[place] for order in rounds) == ["default", "foreach", "fused"]
