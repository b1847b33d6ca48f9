"""The scripts behind docs/benchmarks.md run and print their tables (tiny sizes; no timing is asserted)."""

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
])
def test_benchmark_script_prints_its_table(name, args, rows):
    out = script(name, *args)
    assert out.returncode == 0, out.stderr
    for row in rows:
        assert row in out.stdout, out.stdout


@pytest.mark.parametrize("name", ["kron_cost.py", "qrdqn_learner.py"])
def test_benchmark_script_refuses_bad_arguments(name):
    out = script(name, "--repeats", "0")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "--repeats" in out.stderr
