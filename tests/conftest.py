from contextlib import contextmanager

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils._python_dispatch import TorchDispatchMode


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


# operators that make the host wait for a GPU to learn a value or a size
SYNCING_OPS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten._unique2.default", "aten.masked_select.default"}


class _HostSyncs(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        masks = args[1] if str(func) in ("aten.index.Tensor", "aten.index_put_.default") else ()
        if str(func) in SYNCING_OPS or any(i is not None and i.dtype == torch.bool for i in masks):  # a boolean mask's size
            pytest.fail(f"{func} syncs with a GPU")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def no_host_syncs(monkeypatch):
    """A context in which anything that would make the host wait for a GPU fails the test, run
    on the CPU: a syncing operator, a boolean mask, a tensor read into Python (``tolist``
    bypasses the dispatcher)."""

    @contextmanager
    def checked():
        with monkeypatch.context() as patched, _HostSyncs():
            patched.setattr(torch.Tensor, "tolist", lambda *_: pytest.fail("Tensor.tolist syncs with a GPU"))
            yield

    return checked
