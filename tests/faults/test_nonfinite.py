"""NaN or inf in a loss or gradient: the update is skipped (weights and optimizer state
untouched) and counted in TensorBoard; max_nonfinite_updates in a row stop the run with
exit code 1 and the weights from before the bad updates in its final checkpoint."""

import copy

import pytest
import torch

from parallel_rl import checkpoint as ckpt
from parallel_rl.algos.base import step_if_finite
from parallel_rl.algos.paac import PAAC
from parallel_rl.cli import main

# 16 envs: 80 agent steps per update, which the update counts below are written in
SYNC_CARTPOLE = ["--config", "paac_classic", "--set", "actors.num_envs=16", "--set", "actors.procs=0", "--set", "torch_threads=1", "--set", "logging.console=false",
                 "--set", "logging.interval_s=0", "--set", "checkpoint.interval_steps=0"]


def _tiny():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    loss = net(torch.ones(4, 3)).pow(2).mean()  # one good step, so the optimizer has state
    loss.backward()
    optimizer.step()
    return net, optimizer


@pytest.mark.parametrize("make_loss", [
    lambda net: net(torch.ones(4, 3)).sum() * float("nan"),  # NaN loss
    lambda net: net(torch.ones(4, 3)).sum() * float("inf"),  # inf loss
    # a finite loss (0) with an infinite gradient: d sqrt(x) / dx at x = 0
    lambda net: torch.sqrt(net.weight.sum() - net.weight.sum().detach()),
], ids=["nan-loss", "inf-loss", "inf-gradient"])
def test_step_if_finite_leaves_weights_and_optimizer_untouched(make_loss):
    net, optimizer = _tiny()
    weights, state = copy.deepcopy(net.state_dict()), copy.deepcopy(optimizer.state_dict())
    optimizer.zero_grad()
    loss = make_loss(net)
    loss.backward()
    assert not step_if_finite(optimizer, loss)
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    for index, values in optimizer.state_dict()["state"].items():
        for key, value in values.items():
            assert torch.equal(value, state["state"][index][key]), (index, key)
    assert all(p.grad is None for p in net.parameters())


def test_step_if_finite_steps_on_finite_loss():
    net, optimizer = _tiny()
    before = net.weight.detach().clone()
    optimizer.zero_grad()
    loss = net(torch.ones(4, 3)).pow(2).mean()
    loss.backward()
    assert step_if_finite(optimizer, loss)
    assert not torch.equal(net.weight, before)


def _poison(monkeypatch, bad_updates: set[int]):
    """Make PAAC.update see a NaN reward on the given (0-based) updates; returns what the
    network and optimizer held just before the first of them."""
    real_update = PAAC.update
    calls, snapshot = [0], {}

    def update(self, batch):
        if calls[0] in bad_updates:
            if not snapshot:
                snapshot["policy"] = copy.deepcopy(self.policy().state_dict())
                snapshot["optimizer"] = copy.deepcopy(self.optimizer.state_dict())
            batch.rewards[0, 0] = float("nan")
        calls[0] += 1
        return real_update(self, batch)

    monkeypatch.setattr(PAAC, "update", update)
    return snapshot




def test_a_few_bad_updates_are_skipped_counted_and_the_run_goes_on(tmp_path, monkeypatch, capsys, read_scalars):
    _poison(monkeypatch, {5, 6, 20})
    run_dir = tmp_path / "run"
    code = main(["launch", "--run-dir", str(run_dir), "--steps", "2400", *SYNC_CARTPOLE])
    assert code == 0, capsys.readouterr().err
    tags = read_scalars(run_dir)
    assert tags["diag/nonfinite_updates"][-1] == 3
    for tag in ("losses/total", "diag/grad_norm"):  # a skipped update's NaN losses are not logged
        assert all(value == value for value in tags[tag]), tag
    state = ckpt.load(ckpt.latest(run_dir / "checkpoints"))
    assert state["step"] == 2400
    assert all(torch.isfinite(t).all() for t in state["algo"]["policy"].values())


def test_bad_updates_in_a_row_stop_the_run_with_the_last_good_weights(tmp_path, monkeypatch, capsys, read_scalars):
    snapshot = _poison(monkeypatch, set(range(20, 10_000)))
    run_dir = tmp_path / "run"
    code = main(["launch", "--run-dir", str(run_dir), "--steps", "100000", "--set", "max_nonfinite_updates=5", *SYNC_CARTPOLE])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    assert "5 updates in a row had a NaN or infinite loss or gradient" in err and "max_nonfinite_updates = 5" in err, err
    state = ckpt.load(ckpt.latest(run_dir / "checkpoints"))
    assert state["updates"] == 25 and state["step"] == 25 * 80
    for name, tensor in state["algo"]["policy"].items():
        assert torch.equal(tensor, snapshot["policy"][name]), name
    saved, before = state["algo"]["optimizer"]["state"], snapshot["optimizer"]["state"]
    assert saved.keys() == before.keys()
    for index in saved:
        for key in saved[index]:
            assert torch.equal(saved[index][key], before[index][key]), (index, key)
    assert read_scalars(run_dir)["diag/nonfinite_updates"][-1] == 5


def test_the_count_of_skipped_updates_goes_on_across_a_resume(tmp_path, monkeypatch, capsys, read_scalars):
    run_dir = tmp_path / "run"
    _poison(monkeypatch, {5, 6})
    assert main(["launch", "--run-dir", str(run_dir), "--steps", "2400", *SYNC_CARTPOLE]) == 0, capsys.readouterr().err
    assert ckpt.load(ckpt.latest(run_dir / "checkpoints"))["nonfinite_updates"] == 2
    _poison(monkeypatch, {3})  # the resumed process counts its updates from 0 again
    assert main(["launch", "--resume", str(run_dir), "--steps", "4800"]) == 0, capsys.readouterr().err
    assert read_scalars(run_dir)["diag/nonfinite_updates"][-1] == 3
    assert ckpt.load(ckpt.latest(run_dir / "checkpoints"))["nonfinite_updates"] == 3
