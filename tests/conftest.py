
import pytest


@pytest.fixture
def run_root(tmp_path):
    return tmp_path / "runs"
