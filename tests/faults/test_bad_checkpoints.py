"""Truncated, corrupted, foreign and malicious checkpoints given to `launch --resume` and `eval`.

Each must end in exit code 2 with a message naming the file and what is wrong (for a
foreign one: the environment it was trained on and the one requested), with nothing
written to the run directory and nothing executed.
"""

import shutil

import pytest
import torch
import yaml

from parallel_rl import checkpoint as ckpt
from parallel_rl.cli import main

SYNC_RUN = ["--steps", "800", "--set", "logging.console=false", "--set", "actors.procs=0", "--set", "torch_threads=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished CartPole run and a finished Acrobot run (synchronous, 800 steps each)."""
    root = tmp_path_factory.mktemp("runs")
    for name, env in (("cartpole", "CartPole-v1"), ("acrobot", "Acrobot-v1")):
        assert main(["launch", "--config", "paac_classic", "--env", env, "--run-dir", str(root / name), *SYNC_RUN]) == 0
    return root


def _copy(runs, tmp_path, name="cartpole"):
    run = tmp_path / name
    shutil.copytree(runs / name, run)
    return run, run / "checkpoints" / "step_800.pt"


def _snapshot(run):
    return {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}


def _cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.err


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _zero_header(data: bytes) -> bytes:
    return bytes(64) + data[64:]


def _garbage(data: bytes) -> bytes:
    return bytes((i * 131 + 7) % 256 for i in range(len(data)))


@pytest.mark.parametrize("damage", [_truncate, _zero_header, _garbage], ids=["truncated", "zeroed-header", "garbage"])
def test_damaged_checkpoint_exit_2_naming_the_file(runs, tmp_path, capsys, damage):
    run, path = _copy(runs, tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    before = _snapshot(run)
    for argv in (["launch", "--resume", str(run), "--steps", "1600"], ["eval", str(path), "--episodes", "1"]):
        code, err = _cli(capsys, *argv)
        assert code == 2, err
        assert str(path) in err and "truncated, corrupt or not a parallel-rl checkpoint" in err, err
        # an earlier checkpoint is offered only where there is one
        assert ("be good" in err) == (len(list(path.parent.glob("step_*.pt"))) > 1), err
    assert _snapshot(run) == before  # nothing written


def test_checkpoint_from_another_environment_is_refused_on_resume(runs, tmp_path, capsys):
    run, path = _copy(runs, tmp_path)
    shutil.copy(runs / "acrobot" / "checkpoints" / "step_800.pt", path)
    before = _snapshot(run)
    code, err = _cli(capsys, "launch", "--resume", str(run), "--steps", "1600")
    assert code == 2, err
    assert str(path) in err and "trained on Acrobot-v1, but CartPole-v1 was requested" in err, err
    assert _snapshot(run) == before


def test_shape_mismatch_is_refused_on_resume_and_eval(runs, tmp_path, capsys):
    # resume: the run's config asks for a narrower network than the checkpoint holds
    run, path = _copy(runs, tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["width"] = 32
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    before = _snapshot(run)
    code, err = _cli(capsys, "launch", "--resume", str(run), "--steps", "1600")
    assert code == 2, err
    assert str(path) in err and "(trained on CartPole-v1) does not fit the network built for CartPole-v1" in err, err
    assert "size mismatch" in err and "torch.Size([64, 4])" in err and "torch.Size([32, 4])" in err, err
    assert _snapshot(run) == before

    # eval: a checkpoint whose configuration names another environment than its weights fit
    state = ckpt.load(path)
    state["config"]["env"]["id"] = "Acrobot-v1"
    mixed = tmp_path / "mixed.pt"
    torch.save(state, mixed)
    code, err = _cli(capsys, "eval", str(mixed), "--episodes", "1")
    assert code == 2, err
    assert str(mixed) in err and "does not fit the network built for Acrobot-v1" in err and "size mismatch" in err, err


class Payload:
    """Unpickling this runs code: what a malicious checkpoint would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('executed')",)


def test_pickle_payload_is_refused_not_executed(tmp_path, capsys):
    marker = tmp_path / "executed"
    path = tmp_path / "checkpoints" / "step_800.pt"
    path.parent.mkdir()
    torch.save({"algo": Payload(marker), "step": 800, "config": {}}, path)

    with pytest.raises(ckpt.CheckpointError, match="cannot be read"):
        ckpt.load(path)
    code, err = _cli(capsys, "eval", str(path))
    assert code == 2 and str(path) in err, err
    assert not marker.exists(), "the checkpoint loader executed a pickle payload"

    # the payload is live: an unrestricted unpickler would have run it
    torch.load(path, weights_only=False)
    assert marker.read_text() == "executed"
