
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _read_scalars(run_dir):
    """Every scalar tag a run wrote to its TensorBoard folder, as {tag: [values in order]}."""
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture
def read_scalars():
    return _read_scalars


@pytest.fixture
def run_root(tmp_path):
    return tmp_path / "runs"
