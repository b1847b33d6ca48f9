"""The disk filling up during a checkpoint write.

Simulated (the checkpoint writer's file object takes a part of the data, then fails with
ENOSPC, as a write to a full disk does) in-process, and for real where this machine lets
a test mount a tiny tmpfs in a private mount namespace (skipped elsewhere). Each time: a
clear error naming the file and the cause, the previous checkpoint intact and loadable,
no temporary file left; a run stops with exit code 1 and that message, no traceback.
"""

import errno
import os
import shutil
import subprocess
import sys

import pytest
import torch

from parallel_rl import checkpoint as ckpt
from parallel_rl import config
from parallel_rl.algos import make_algorithm
from parallel_rl.cli import main
from parallel_rl.config import from_dict
from parallel_rl.envs import env_spec

SHORT_SYNC_RUN = ["--config", "paac_classic", "--steps", "2400", "--set", "checkpoint.interval_steps=800", "--set", "torch_threads=1",
                  "--set", "logging.console=false", "--set", "logging.interval_s=1000"]


class _FillingFile:
    """A file on a disk with ``room`` bytes left: writes beyond it store what fits, then fail."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self.room:
            self.file.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.close()


def disk_full(room: int, after_files: int = 0):
    """An ``open`` for the config module, whose ``write_atomically`` writes checkpoints and
    ``config.yaml``: the first ``after_files`` files written get the whole disk, later ones
    only ``room`` bytes."""
    opened = 0

    def fake_open(path, mode="r", *args, **kwargs):
        nonlocal opened
        file = open(path, mode, *args, **kwargs)
        if "w" not in mode:
            return file
        opened += 1
        return file if opened <= after_files else _FillingFile(file, room)

    return fake_open


def _assert_loads_into_a_network(path):
    state = ckpt.load(path)
    cfg = from_dict(state["config"])
    ckpt.restore(make_algorithm(env_spec(cfg.env), cfg, torch.device("cpu")), state, path, cfg.env.id)
    return state


def test_enospc_mid_write_names_file_and_cause_and_keeps_previous(tmp_path, monkeypatch):
    manager = ckpt.CheckpointManager(tmp_path, keep_last=2)
    weights = {"w": torch.arange(20_000, dtype=torch.float32)}
    first = manager.save({"algo": weights, "step": 100, "config": {}}, 100)
    monkeypatch.setattr(config, "open", disk_full(room=4096), raising=False)
    with pytest.raises(ckpt.CheckpointWriteError) as caught:
        manager.save({"algo": {"w": torch.zeros(20_000)}, "step": 200, "config": {}}, 200)
    message = str(caught.value)
    assert str(tmp_path / "step_200.pt") in message and "no space left on device" in message.lower(), message
    assert "ENOSPC" in message and str(first) in message, message
    assert [p.name for p in tmp_path.iterdir()] == ["step_100.pt"]  # no temporary file, no partial checkpoint
    assert torch.equal(ckpt.load(first)["algo"]["w"], weights["w"])


def test_run_stops_with_exit_1_when_the_disk_fills(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    # the files written are config.yaml, then the checkpoint at step 800; the one at step 1600 hits a full disk
    monkeypatch.setattr(config, "open", disk_full(room=1000, after_files=2), raising=False)
    code = main(["launch", "--run-dir", str(run_dir), *SHORT_SYNC_RUN])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    assert str(run_dir / "checkpoints" / "step_1600.pt") in err and "No space left on device" in err, err
    assert f"newest intact checkpoint is '{run_dir / 'checkpoints' / 'step_800.pt'}'" in err, err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_800.pt"]
    assert _assert_loads_into_a_network(run_dir / "checkpoints" / "step_800.pt")["step"] == 800


def _can_mount_tmpfs(where) -> bool:
    if not shutil.which("unshare"):
        return False
    where.mkdir()
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{where}'"],
                           capture_output=True)
    return probe.returncode == 0


def test_real_full_tmpfs(tmp_path):
    """A run directory on a tmpfs with room for one checkpoint and a bit, not for two."""
    if not _can_mount_tmpfs(tmp_path / "probe"):
        pytest.skip("mounting a tmpfs in a private mount namespace is not permitted here")
    # the size of one checkpoint of this run, measured on an ordinary disk
    measured = tmp_path / "measured"
    assert main(["launch", "--run-dir", str(measured), *SHORT_SYNC_RUN, "--steps", "800"]) == 0
    size = (measured / "checkpoints" / "step_800.pt").stat().st_size
    room_kib = (size + size // 2) // 1024 + 16  # one checkpoint, config.yaml and TensorBoard's file; not two checkpoints
    mount, out = tmp_path / "mnt", tmp_path / "out"
    mount.mkdir()
    out.mkdir()
    launch = " ".join([sys.executable, "-m", "parallel_rl.cli", "launch", "--run-dir", f"'{mount}/run'", *SHORT_SYNC_RUN])
    # everything is inspected inside the namespace: its tmpfs vanishes with it
    script = f"""
        mount -t tmpfs -o size={room_kib}k tmpfs '{mount}' || exit 97
        {launch} > '{out}/stdout' 2> '{out}/stderr'
        echo $? > '{out}/code'
        ls -A '{mount}/run/checkpoints' > '{out}/listing'
        cp '{mount}'/run/checkpoints/step_*.pt '{out}/'
        df -k '{mount}' > '{out}/df'
    """
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    err = (out / "stderr").read_text()
    assert (out / "code").read_text().strip() == "1", (err, (out / "df").read_text())
    assert "Traceback" not in err
    assert f"Cannot write checkpoint '{mount}/run/checkpoints/step_1600.pt': No space left on device" in err, err
    assert f"newest intact checkpoint is '{mount}/run/checkpoints/step_800.pt'" in err, err
    assert (out / "listing").read_text().split() == ["step_800.pt"]  # no temporary file left
    assert _assert_loads_into_a_network(out / "step_800.pt")["step"] == 800
