"""A regular (non-editable) install carries the named recipes: the wheel holds every
file of configs/ as package data, so `--config NAME` resolves without a checkout."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_every_recipe(tmp_path):
    # built from a copy: setuptools leaves build/ and egg-info in the tree it builds
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "report"))
    # the build backend is already installed (the editable install needed it); no isolation
    # keeps the test off the package index
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("parallel_rl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(name).name for name in names if name.startswith("parallel_rl/configs/")}
    assert shipped == {path.name for path in (ROOT / "configs").glob("*.yaml")}
    assert "parallel_rl/configs/paac_atari.yaml" in names  # the default recipe
    assert "parallel_rl/paper_scores.yaml" in names  # report --paper's references
