import warnings

import pytest

warnings.filterwarnings("ignore", message=".*precision lowered.*")


@pytest.fixture
def run_root(tmp_path):
    return tmp_path / "runs"
