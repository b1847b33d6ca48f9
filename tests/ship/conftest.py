"""Short CartPole runs shared by the report, video and TensorBoard tests (made once per session)."""

import subprocess
import sys

import pytest

# three runs started together: two PAAC seeds (synchronous) and one IMPALA run with an
# actor process, so the asynchronous-only tags are written too
RUNS = {
    "paac_s1": ["--seed", "1"],
    "paac_s2": ["--seed", "2"],
    "impala_s1": ["--seed", "1", "--actor-procs", "1", "--set", "algo.name=impala"],
}


@pytest.fixture(scope="session")
def cartpole_runs(tmp_path_factory):
    """{name: (run directory, launch stdout)} of three 4,000-step CartPole runs."""
    root = tmp_path_factory.mktemp("runs")
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "parallel_rl.cli", "launch", "--config", "paac_classic", "--steps", "4000",
             "--run-dir", str(root / name), "--set", "logging.interval_s=0",
             # one thread each: three runs share two cores with whatever else runs
             "--set", "torch_threads=1", "--set", "actors.num_threads=1", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, extra in RUNS.items()
    }
    runs = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, (name, stderr)
        runs[name] = (root / name, stdout)
    return runs


@pytest.fixture(scope="session")
def filmed_cartpole(cartpole_runs, tmp_path_factory):
    """(run directory, MP4 path, eval stdout) after filming two episodes of the first PAAC run."""
    run, _ = cartpole_runs["paac_s1"]
    video = tmp_path_factory.mktemp("video") / "cartpole.mp4"
    out = subprocess.run([sys.executable, "-m", "parallel_rl.cli", "eval", str(run), "--episodes", "3",
                          "--video", str(video), "--video-episodes", "2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return run, video, out.stdout
