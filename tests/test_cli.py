"""The real CLI: a short Pong run, resume, eval, and every bad input -> exit 2 with a message."""

import os
import subprocess
import sys
import types

import pytest
import torch

from parallel_rl import checkpoint as ckpt


def cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "parallel_rl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)




def test_short_pong_run_writes_tensorboard_and_checkpoint(tmp_path, read_scalars):
    run = tmp_path / "pong"
    out = cli("launch", "--env", "Pong-v5", "--actors", "8", "--steps", "1600", "--run-dir", str(run),
              "--set", "env.max_episode_steps=60", "--set", "logging.interval_s=0")
    assert out.returncode == 0, out.stderr
    assert "convolutions channels-last (perf.channels_last)" in out.stdout  # auto, on a CPU, said where the layout is
    tags = read_scalars(run)
    for tag in ("charts/episodic_return", "charts/episodic_length", "charts/sps", "losses/policy", "losses/value",
                "losses/entropy", "diag/grad_norm", "charts/learning_rate"):
        assert tag in tags, tag
    assert all(torch.isfinite(torch.tensor(tags[t])).all() for t in ("losses/policy", "losses/value", "losses/total"))
    assert max(tags["charts/episodic_length"]) <= 60
    assert (run / "config.yaml").is_file()
    assert ckpt.latest(run / "checkpoints").name == "step_1600.pt"


def test_resume_continues_step_counter_and_restores_state(tmp_path, read_scalars):
    run = tmp_path / "cp"
    first = cli("launch", "--config", "paac_classic", "--steps", "4000", "--run-dir", str(run),
                "--set", "checkpoint.interval_steps=2000")
    assert first.returncode == 0, first.stderr
    saved = ckpt.load(run / "checkpoints" / "step_4000.pt")
    assert saved["step"] == 4000 and saved["updates"] == 25  # 32 envs x 5 steps per update

    # the resumed algorithm starts from exactly the saved weights and optimizer state
    from parallel_rl.algos import make_algorithm
    from parallel_rl.config import from_dict
    from parallel_rl.envs import env_spec

    cfg = from_dict(saved["config"])
    algo = make_algorithm(env_spec(cfg.env), cfg, torch.device("cpu"))
    algo.load_state_dict(saved["algo"])
    for name, tensor in algo.policy().state_dict().items():
        assert torch.equal(tensor, saved["algo"]["policy"][name]), name
    opt = algo.optimizer.state_dict()
    assert opt["state"][0]["step"] == saved["algo"]["optimizer"]["state"][0]["step"] == 25
    assert torch.equal(opt["state"][0]["exp_avg_sq"], saved["algo"]["optimizer"]["state"][0]["exp_avg_sq"])

    second = cli("launch", "--resume", str(run), "--steps", "8000")
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stdout and "from step 4000" in second.stdout
    resumed = ckpt.load(ckpt.latest(run / "checkpoints"))
    assert resumed["step"] == 8000 and resumed["updates"] == 50
    # the optimizer kept counting from the restored state rather than starting again
    assert resumed["algo"]["optimizer"]["state"][0]["step"] == 50
    # the LR schedule position continued: the last update used lr for progress 7840/8000
    assert read_scalars(run)["charts/learning_rate"][-1] == pytest.approx(3e-3 * (1 - 7840 / 8000), rel=1e-4)


def test_a_resume_that_changes_settings_says_which_and_keeps_the_earlier_ones(tmp_path):
    run = tmp_path / "cp"
    assert cli("launch", "--config", "paac_classic", "--steps", "800", "--run-dir", str(run)).returncode == 0
    before = (run / "config.yaml").read_text()
    second = cli("launch", "--resume", str(run), "--steps", "1600", "--set", "algo.entropy_coef=0.02")
    assert second.returncode == 0, second.stderr
    assert ("changed on resume (2): total_steps: 800 -> 1600; algo.entropy_coef: 0.003 -> 0.02. The settings of the "
            f"steps so far stay in {run / 'config.until_step_800.yaml'}.") in second.stdout, second.stdout
    assert (run / "config.until_step_800.yaml").read_text() == before
    assert "entropy_coef: 0.02" in (run / "config.yaml").read_text()
    third = cli("launch", "--resume", str(run), "--steps", "2400")  # only the steps: kept as well, at its own step
    assert "changed on resume (1): total_steps: 1600 -> 2400" in third.stdout, third.stdout
    assert sorted(p.name for p in run.glob("config.until_step_*.yaml")) == ["config.until_step_1600.yaml", "config.until_step_800.yaml"]
    report = cli("report", str(run), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert "changed settings when resumed (config.until_step_1600.yaml, config.until_step_800.yaml" in report.stderr


def test_eval_prints_mean_and_std(tmp_path):
    run = tmp_path / "ev"
    assert cli("launch", "--config", "paac_classic", "--steps", "2000", "--run-dir", str(run)).returncode == 0
    out = cli("eval", str(run), "--episodes", "3")
    assert out.returncode == 0, out.stderr
    assert "mean return" in out.stdout and "over 3 episodes" in out.stdout


def test_eval_of_a_run_compiled_elsewhere_runs_eagerly_where_inductor_cannot_build(tmp_path):
    run = tmp_path / "ev"
    assert cli("launch", "--config", "paac_classic", "--steps", "2000", "--run-dir", str(run)).returncode == 0
    path = ckpt.latest(run / "checkpoints")
    state = ckpt.load(path)
    assert state["config"]["perf"]["compile"] == "auto"
    state["config"]["perf"]["compile"] = True  # as saved by a run launched with --set perf.compile=true
    ckpt.save_atomic(state, path)
    env = {**os.environ, "CXX": str(tmp_path / "no_such_compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    out = cli("eval", str(run), "--episodes", "2", env=env)
    assert out.returncode == 0, out.stderr
    assert "over 2 episodes" in out.stdout


def test_envs_lists_and_filters():
    out = cli("envs", "pong")
    assert out.returncode == 0 and "Pong-v5" in out.stdout and "CartPole" not in out.stdout


def test_a_checkpoint_with_a_damaged_entry_is_refused_naming_it(tmp_path):
    """A checkpoint that loads but was edited or written by another program: each malformed
    entry is named (exit 2) before anything resumes, where it used to fail deep in the resume
    as a traceback (a KeyError, an AttributeError, a TypeError)."""
    run = tmp_path / "run"
    assert cli("launch", "--config", "paac_classic", "--steps", "800", "--run-dir", str(run)).returncode == 0
    path = ckpt.latest(run / "checkpoints")
    good = torch.load(path, weights_only=True)
    damages = {
        "its config's env should be a mapping": lambda state: state["config"].update(env="x"),
        "its recent_returns should be a list of numbers": lambda state: state.update(recent_returns="abc"),
        "its updates should be a count": lambda state: state.update(updates="x"),
        "its torch_rng should be the random number generator's state": lambda state: state.update(torch_rng=torch.zeros(3)),
        "it can be evaluated, not resumed": lambda state: state.pop("torch_rng"),
    }
    for words, damage in damages.items():
        state = {**good, "config": dict(good["config"])}
        damage(state)
        torch.save(state, path)
        out = cli("launch", "--resume", str(run), "--steps", "1600")
        assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr, (words, out.stderr)
    torch.save(good, path)
    settings = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text("")  # read as the defaults, it was "trained on CartPole-v1, but Pong-v5 was requested"
    out = cli("launch", "--resume", str(run), "--steps", "1600")
    assert out.returncode == 2 and "its config.yaml is empty" in out.stderr, out.stderr
    (run / "config.yaml").write_text(settings)
    assert cli("launch", "--resume", str(run), "--steps", "1600").returncode == 0


def _bad_checkpoint(tmp_path):
    good = tmp_path / "good"
    assert cli("launch", "--config", "paac_classic", "--steps", "800", "--run-dir", str(good)).returncode == 0
    data = (good / "checkpoints" / "step_800.pt").read_bytes()
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(data[: len(data) // 2])
    return bad


@pytest.mark.parametrize(
    "args, must_name",
    [
        (["launch", "--env", "Pongg-v5", "--run-dir", "r"], ["Pongg-v5", "Pong-v5"]),
        (["launch", "--set", "algo.gama=0.9", "--run-dir", "r"], ["algo.gama", "algo.gamma"]),
        (["launch", "--set", "algo.gamma=abc", "--run-dir", "r"], ["'abc'", "number"]),
        (["launch", "--actors", "0", "--run-dir", "r"], ["actors.num_envs = 0", "positive"]),
        (["launch", "--config", "no_such_recipe", "--run-dir", "r"], ["no_such_recipe", "paac_atari"]),
        (["launch", "--device", "tpu", "--run-dir", "r"], ["'tpu'", "cuda:N"]),
        (["launch", "--device", "cpu", "--set", "perf.cuda_graphs=true", "--run-dir", "r"],
         ["perf.cuda_graphs = true", "learner runs on cpu", "device=cuda", "perf.cuda_graphs=false"]),
        (["launch", "--resume", "MISSING_DIR"], ["MISSING_DIR", "config.yaml"]),
        (["eval", "MISSING_DIR"], ["MISSING_DIR", "does not exist"]),
        (["eval", "r", "--episodes", "0"], ["--episodes 0", "at least 1"]),
        (["bench", "--config", "paac_classic", "--seconds", "nan"], ["--seconds nan", "finite"]),
        (["bench", "--config", "paac_classic", "--seconds", "1e-9"], ["--seconds 1e-09", "1 second or more"]),
        (["launch", "--device", "cuda:00", "--run-dir", "r"], ["'cuda:00'", "cuda:N"]),
        (["launch", "--resume", ""], ["--resume", "empty", "a run directory"]),
        (["launch", "--config", "", "--run-dir", "r"], ["--config", "empty"]),
        (["eval", ""], ["argument path", "empty"]),
        (["report", "runs", "--out", ""], ["--out", "empty"]),
        (["launch", "--run-dir", "r/" + "x" * 300], ["--run-dir", "has a name of 300 bytes", "shorter path"]),
        (["eval", "r", "--video", "x" * 300 + ".mp4"], ["--video", "has a name of 304 bytes"]),
        (["launch", "--set", 'logging.run_root="a\\0b"', "--run-dir", "r"], ["logging.run_root", "NUL byte", "without it"]),
        (["launch", "--config", "paac_classic", "--set", "env.max_episode_steps=2147483648", "--dry-run", "--run-dir", "r"],
         ["env.max_episode_steps = 2147483648 is out of range", "2147483647"]),
        (["launch", "--config", "paac_classic", "--set", "actors.num_threads=3e9", "--run-dir", "r"],
         ["actors.num_threads = 3000000000 is out of range"]),
        (["launch", "--config", "paac_classic", "--set", "actors.device=cuda", "--actor-procs", "1", "--run-dir", "r"],
         ["actors.device = 'cuda'", "CUDA is not available", "actors.device=cpu"]),
        (["launch", "--config", "paac_classic", "--env", "Pendulum-v1", "--dry-run", "--run-dir", "r"],
         ["needs discrete actions", "Pendulum-v1", "simbav2_pendulum"]),
        (["eval", "r", "--video", "/proc/v.mp4"], ["--video '/proc/v.mp4'", "cannot be written in '/proc'"]),
        (["eval", "r", "--device", "gpu"], ["--device = 'gpu'", "cuda:N"]),
        (["eval", "r", "--seed", "99999999999", "--episodes", "4"], ["--seed = 99999999999", "[-2147483648, 2147483644]"]),
        (["launch", "--config", "paac_classic", "--seed", "2147483640", "--run-dir", "r"],
         ["seed = 2147483640", "32 env(s)", "2147483616"]),
        # values torch's optimizers refuse, or take and then step wildly: refused before anything starts
        (["launch", "--config", "paac_classic", "--set", "optim.eps=-1", "--dry-run", "--run-dir", "r"], ["optim.eps = -1.0", "0 or more"]),
        (["launch", "--set", "optim.alpha=1.5", "--dry-run", "--run-dir", "r"], ["optim.alpha = 1.5", "[0, 1)"]),
        (["launch", "--set", "env.image_size=19", "--set", "model.encoder=nips_cnn", "--dry-run", "--run-dir", "r"],
         ["(4, 19, 19) are too small for model.encoder = 'nips_cnn'", "at least 20 pixels", "env.image_size"]),
        (["launch", "--config", "ppo_atari", "--set", "env.image_size=35", "--dry-run", "--run-dir", "r"], ["'nature_cnn'", "at least 36 pixels"]),
        # a lag bound actor processes cannot keep: refused before the run directory is written, and by --dry-run
        (["launch", "--config", "qrdqn_classic", "--actor-procs", "1", "--set", "actors.max_policy_lag=0", "--steps", "2000",
          "--run-dir", "r"], ["actors.max_policy_lag = 0 cannot hold", "actors.max_policy_lag to 1 or more"]),
        (["launch", "--config", "qrdqn_classic", "--actor-procs", "1", "--set", "actors.max_policy_lag=0", "--dry-run",
          "--run-dir", "r"], ["actors.max_policy_lag = 0 cannot hold", "actors.procs=0"]),
    ],
)
def test_bad_input_exit_2_with_message(tmp_path, args, must_name):
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    for text in must_name:
        assert text in out.stderr, (text, out.stderr)
    assert not (tmp_path / "r").exists()  # nothing created for a run that never started


def test_compile_asked_for_where_inductor_cannot_build_exits_2_naming_the_way_out(tmp_path):
    """A machine without a C++ compiler, made real by pointing inductor at a missing one (and
    at an empty cache, so that nothing built before can stand in for the compiler)."""
    env = {**os.environ, "CXX": str(tmp_path / "no_such_compiler"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    out = cli("launch", "--config", "paac_classic", "--steps", "2000", "--set", "perf.compile=true", "--run-dir", "r",
              cwd=tmp_path, env=env)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    for text in ("perf.compile = true", "cannot build cpu code", "C++ compiler", "perf.compile=auto", "perf.compile=false"):
        assert text in out.stderr, (text, out.stderr)
    assert not (tmp_path / "r").exists()
    out = cli("launch", "--config", "paac_classic", "--steps", "2000", "--set", "perf.compile=auto", "--run-dir", "r",
              "--dry-run", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr  # auto stays eager there instead


def test_a_resume_that_cannot_continue_is_refused_before_anything_runs(tmp_path):
    """Another algorithm whose state has the same keys (PPO after PAAC), another env, a
    network of another width or another optimizer: refused with exit 2, with --dry-run too, the run left as it was."""
    run = tmp_path / "run"
    assert cli("launch", "--config", "paac_classic", "--steps", "800", "--run-dir", str(run)).returncode == 0
    saved = (run / "config.yaml").read_text()
    for change, words in ((["--set", "algo.name=ppo"], ["algo.name = 'paac'", "'ppo' was requested"]),
                          (["--set", "env.id=Acrobot-v1", "--dry-run"], ["trained on CartPole-v1", "Acrobot-v1"]),
                          (["--set", "model.width=128", "--dry-run"], ["does not fit the network", "size mismatch"]),
                          # the state of torch's Adam, which Kron would read as its own at the first step
                          (["--set", "optim.name=kron", "--dry-run"], ["optim.name = 'adam'", "'kron' was requested"])):
        out = cli("launch", "--resume", str(run), "--steps", "1600", *change)
        assert out.returncode == 2 and "Traceback" not in out.stderr, (change, out.stderr)
        for text in words:
            assert text in out.stderr, (text, out.stderr)
    assert (run / "config.yaml").read_text() == saved
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["step_800.pt"]
    out = cli("launch", "--resume", str(run), "--actors", "0")  # a falsy value is a value given
    assert out.returncode == 2 and "drop --config, --env, --actors" in out.stderr
    out = cli("report", str(run), "--out", "/proc/no_report")
    assert out.returncode == 2 and "--out '/proc/no_report' cannot be created" in out.stderr, out.stderr


def test_a_run_directory_in_use_is_refused_and_the_run_in_it_keeps_every_checkpoint(tmp_path):
    """A resume (or a new run) of a directory that a run is still writing: each would delete
    the other's checkpoints as it keeps only its newest. Refused with exit 2, with --dry-run
    too, naming the holder; once that run ends, the directory resumes as usual."""
    import signal
    import time

    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "parallel_rl", "launch", "--config", "paac_classic", "--steps", "10000000",
                              "--run-dir", str(run), "--set", "checkpoint.interval_steps=2000", "--set", "checkpoint.keep_last=50"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints").is_dir() or not ckpt.list_checkpoints(run / "checkpoints"):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() is not None else "no checkpoint"
            time.sleep(0.2)
        for args in (["--resume", str(run), "--steps", "20000000"], ["--resume", str(run), "--dry-run"],
                     ["--config", "paac_classic", "--run-dir", str(run)]):
            out = cli("launch", *args)
            assert out.returncode == 2 and "Traceback" not in out.stderr, (args, out.stderr)
            assert "in use by another parallel-rl process" in out.stderr and f"pid {first.pid}" in out.stderr, (args, out.stderr)
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(60) == 130, first.stderr.read()
    saved = ckpt.list_checkpoints(run / "checkpoints")
    assert saved and all(path.is_file() for path in saved)
    out = cli("launch", "--resume", str(run), "--steps", str(ckpt.load(saved[-1])["step"] + 1000))
    assert out.returncode == 0, out.stderr


def test_a_run_dir_left_without_a_checkpoint_is_named_as_such(tmp_path):
    """A run that failed before its first checkpoint cannot be resumed: the refusal says so
    rather than pointing at --resume."""
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("seed: 1\n")
    out = cli("launch", "--config", "paac_classic", "--run-dir", "r", "--dry-run", cwd=tmp_path)
    assert out.returncode == 2 and "holds no checkpoint to resume from" in out.stderr, out.stderr


def test_corrupt_checkpoint_exit_2(tmp_path):
    bad = _bad_checkpoint(tmp_path)
    out = cli("eval", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(bad) in out.stderr and "corrupt" in out.stderr
    # the newest checkpoint of a run is the corrupt one: the message names the one before it
    newest = tmp_path / "good" / "checkpoints" / "step_1600.pt"
    newest.write_bytes(os.urandom(4096))
    out = cli("launch", "--resume", str(tmp_path / "good"), "--steps", "2400")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(newest) in out.stderr and "step_800.pt" in out.stderr and "move step_1600.pt aside" in out.stderr
    assert "weights_only" not in out.stderr  # torch's advice to load it unsafely is not passed on


def test_bench_reports_three_figures_as_json():
    out = cli("bench", "--config", "paac_classic", "--actors", "4", "--seconds", "1", "--repeats", "1", "--json")
    assert out.returncode == 0, out.stderr
    import json

    result = json.loads(out.stdout)
    assert result["raw_sps_median"] > 0 and result["pipeline_sps_median"] > 0 and result["train_sps_median"] > 0
    assert result["end_to_end_efficiency"] == pytest.approx(result["train_sps_median"] / result["raw_sps_median"])


def test_bench_json_gives_null_for_a_figure_it_could_not_measure():
    """json.dumps wrote NaN (updates/s from a phase of one update), which strict JSON readers refuse."""
    import json

    from parallel_rl.cli import null_for_unmeasured

    result = {"train_updates_per_s": float("nan"), "per_repeat": [1.5, float("inf")], "env": "Pong-v5", "repeats": 3}
    text = json.dumps(null_for_unmeasured(result), allow_nan=False)
    assert json.loads(text) == {"train_updates_per_s": None, "per_repeat": [1.5, None], "env": "Pong-v5", "repeats": 3}


def test_a_listing_whose_reader_stops_early_exits_quietly():
    """`parallel-rl envs | head -1`: the reader closes the pipe; no traceback, exit 0."""
    import subprocess
    import sys

    listing = subprocess.Popen([sys.executable, "-m", "parallel_rl", "envs"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert listing.stdout.readline()
    listing.stdout.close()
    _, stderr = listing.communicate(timeout=120)
    assert listing.returncode == 0 and b"Traceback" not in stderr, stderr.decode()


def test_the_last_progress_line_shows_no_time_left_when_the_last_rollout_overshoots(capsys):
    from parallel_rl.metrics import Metrics

    metrics = Metrics(None, total_steps=2_000_000, interval_s=30.0, return_window=20, console=True)
    metrics.sps = 450.0
    metrics.print_progress(2_000_896)  # whole rollouts end past the budget
    assert "ETA 0:00:00" in capsys.readouterr().out


def test_a_gpu_index_the_machine_lacks_is_refused_before_anything_starts(monkeypatch):
    """``cuda:N`` beyond the GPUs present would otherwise fail only inside an actor process (exit 1)."""
    from parallel_rl.config import ConfigError
    from parallel_rl.runtime.runner import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0", "actors.device") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match=r"actors.device = 'cuda:1' but this machine has 1 GPU \(cuda:0\)"):
        resolve_device("cuda:1", "actors.device")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"device = 'cuda:2' but this machine has 2 GPUs \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


def test_actor_processes_act_on_their_learners_gpu(monkeypatch):
    """``actors.device: auto`` (or a bare ``cuda``) in a spawned actor process meant GPU 0,
    whatever GPU its learner had: on 4 ranks every rank's actors crowded beside rank 0's
    learner. They now take the learner's GPU; a GPU named outright, or the CPU, stays."""
    from parallel_rl import distributed
    from parallel_rl.runtime.runner import resolve_actors_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    learner = torch.device("cuda", 2)
    assert resolve_actors_device("auto", learner) == learner == resolve_actors_device("cuda", learner)
    assert resolve_actors_device("cuda:3", learner) == torch.device("cuda", 3)
    assert resolve_actors_device("cpu", learner) == torch.device("cpu")
    assert resolve_actors_device("auto", torch.device("cpu")) == torch.device("cuda", 0)
    monkeypatch.setattr(distributed, "_world", distributed.World(rank=1, size=2, local_rank=1))
    assert resolve_actors_device("auto", torch.device("cpu")) == torch.device("cuda", 1)  # a CPU learner's rank: its GPU


def test_a_checkpoint_keeps_the_learner_gpus_generator_and_gives_it_to_the_resuming_learners_gpu(monkeypatch):
    """All GPUs' generators were saved and restored by number, and only where the GPU count
    matched: a run on cuda:0 resumed on cuda:1, or under another CUDA_VISIBLE_DEVICES,
    drew its first updates' random numbers again from the seed."""
    from parallel_rl import checkpoint as checkpoints
    from parallel_rl.config import build_config

    saved_from, restored_to = [], []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: saved_from.append(device) or torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored_to.append((state.tolist(), device)))
    algo = types.SimpleNamespace(state_dict=dict)
    state = checkpoints.training_state(algo, build_config("paac_classic"), 10, 1, [], device=torch.device("cuda", 0))
    assert saved_from == [torch.device("cuda", 0)]
    checkpoints.restore_rng(state, torch.device("cuda", 1))
    assert restored_to == [([7], torch.device("cuda", 1))]
    checkpoints.restore_rng(state, torch.device("cpu"))  # resumed on a CPU: the CPU's generator alone
    assert len(restored_to) == 1
    assert checkpoints.training_state(algo, build_config("paac_classic"), 10, 1, [], device=torch.device("cpu"))["cuda_rng"] is None


@pytest.mark.parametrize(("backend", "agent_steps_per_step"), [("envpool", 0.5), ("gymnasium", 1.0)])
def test_bench_raw_figure_counts_agent_steps_where_the_env_repeats_actions(monkeypatch, backend, agent_steps_per_step):
    """EnvPool steps each env once per call, and VecEnv repeats an action by stepping again:
    an agent step is env.action_repeat of the raw loop's steps there (gymnasium's envs
    repeat inside one step). Counted as agent steps, the raw figure was twice too high with
    a repeat of 2, and the transport's efficiency half what it was. A clock that ticks a
    second a reading makes the loop's steps the same for every setting."""
    import itertools
    import types

    from parallel_rl import bench
    from parallel_rl.config import build_config

    def raw_figure(action_repeat: int) -> float:
        ticks = itertools.count()
        monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
        cfg = build_config("simbav2_pendulum", {"actors.num_envs": 2},
                           [f"env.backend={backend}", f"env.action_repeat={action_repeat}"])
        return bench.raw_env_sps(cfg, 4.0, 1)

    assert raw_figure(2) == pytest.approx(agent_steps_per_step * raw_figure(1))


def test_a_rank_failure_that_a_stop_signal_interrupts_is_still_named(monkeypatch, capsys):
    """A rank whose peer died learns it from a failed collective; torchrun's SIGTERM can then
    arrive while it closes down. The run's error is the rank failure, said in its paragraph,
    not 'interrupted by SIGTERM'."""
    import signal

    from parallel_rl import cli, distributed
    from parallel_rl.runtime import signals

    def peer_died_then_sigterm(args):
        try:
            raise distributed.RankFailure("rank 0 of 2: averaging gradients with the other ranks failed; another rank died")
        finally:
            raise signals.Interrupted(signal.SIGTERM)

    monkeypatch.setitem(cli.COMMANDS, "config", peer_died_then_sigterm)
    code = cli.main(["config"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILURE
    assert "parallel-rl config: error: rank 0 of 2" in err and "another rank died" in err and "SIGTERM arrived" in err
    assert "interrupted by" not in err

    def plain_sigterm(args):
        raise signals.Interrupted(signal.SIGTERM)

    monkeypatch.setitem(cli.COMMANDS, "config", plain_sigterm)
    assert cli.main(["config"]) == 143 and "interrupted by SIGTERM" in capsys.readouterr().err


def test_a_stop_signal_while_the_children_are_reaped_changes_nothing(monkeypatch, capsys):
    """Once the command has ended, a stop signal arriving while its child processes are
    joined neither raises out of ``main`` (a traceback) nor changes its exit code."""
    import signal
    import time

    from parallel_rl import cli
    from parallel_rl.runtime import supervision

    def signalled_while_reaping():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # Python runs the handler at the next instruction: within this wait

    monkeypatch.setattr(supervision, "reap_children", signalled_while_reaping)
    monkeypatch.setitem(cli.COMMANDS, "config", lambda args: 0)
    assert cli.main(["config"]) == 0
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 32000000000 bytes. Error code 12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    MemoryError(),
])
def test_running_out_of_memory_is_explained_in_a_paragraph(capsys, failure):
    """A network, replay or rollout too large for the device: the allocator's own error says
    what was asked for, the paragraph what to shrink (exit 1, not a traceback)."""
    from parallel_rl.cli import _report_failure

    assert _report_failure("launch", failure) == 1
    err = capsys.readouterr().err
    assert "error: out of memory" in err and "model.width" in err and "replay.capacity" in err, err
    assert _report_failure("launch", RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None  # a bug stays a traceback
