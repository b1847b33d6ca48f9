"""The Kron (PSGD-Kron) optimizer option: it learns, and its state survives a checkpoint."""

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from parallel_rl import checkpoint as ckpt
from parallel_rl.algos.ppo import PPO
from parallel_rl.config import ConfigError, build_config
from parallel_rl.envs import EnvSpec
from parallel_rl.optim import KronTorchPreconditionerSchedule, make_optimizer

SPEC = EnvSpec("Fake-v1", "envpool", (4,), np.dtype(np.float32), gym.spaces.Discrete(2), False)


def _kron_config(*overrides):
    return build_config("ppo_classic", overrides=["optim.name=kron", "model.torso=multiskip", "model.depth=2", *overrides])


def _regression(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(256, 1, generator=g)
    return x, y


def test_lr_is_a_third_of_the_base_lr_and_the_rule_is_shown():
    cfg = _kron_config("optim.lr=0.0003")
    assert cfg.effective_lr == pytest.approx(1e-4)
    assert cfg.lr_arithmetic == "optim.lr 0.0003 / optim.kron_lr_divisor 3 = 0.0001"
    with pytest.raises(ConfigError, match="kron_lr_divisor = 0"):
        _kron_config("optim.kron_lr_divisor=0")


def test_a_kron_step_decreases_a_regression_loss():
    torch.manual_seed(0)
    x, y = _regression()
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    optimizer = make_optimizer(model.parameters(), _kron_config("optim.lr=0.03"))
    losses = []
    for _ in range(30):
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    final = F.mse_loss(model(x), y).item()
    assert F.mse_loss(model(x), y).item() < losses[0]
    assert losses[1] < losses[0]  # the very first step already helps
    assert final < 0.5 * losses[0], losses


def _train_steps(algo, steps, seed):
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(seed))
    for _ in range(steps):
        logits, values = algo.net(x)
        loss = values.pow(2).mean() - logits.log_softmax(-1)[:, 0].mean()
        algo.optimizer.zero_grad()
        loss.backward()
        algo.optimizer.step()


def _assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_kron_state_survives_a_checkpoint_resume(tmp_path):
    cfg = _kron_config()
    torch.manual_seed(0)
    trained = PPO(SPEC, cfg, torch.device("cpu"))
    _train_steps(trained, 5, seed=1)
    assert trained.optimizer.state, "Kron kept no state to check"
    path = tmp_path / "step_5.pt"
    ckpt.save_atomic({"algo": trained.state_dict(), "step": 5, "config": cfg.to_dict()}, path)

    resumed = PPO(SPEC, cfg, torch.device("cpu"))
    ckpt.restore(resumed, ckpt.load(path), path, cfg.env.id)  # torch.load(weights_only=True), as a resume does
    _assert_same(trained.optimizer.state_dict(), resumed.optimizer.state_dict(), "optimizer")

    # the state is complete: the next steps are the same in both
    for algo in (trained, resumed):
        torch.manual_seed(7)
        _train_steps(algo, 3, seed=2)
    for (name, p), q in zip(trained.net.named_parameters(), resumed.net.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_every_rank_draws_the_same_preconditioner_noise_whatever_its_own_generator():
    """Kron adds random noise to each preconditioner update. The ranks of a data-parallel run
    seed torch's generator each its own way (their minibatches, their acting): drawn from it,
    the same averaged gradients stepped the replicas apart. The draws follow the run's seed and
    the step's number instead, and leave each rank's own generator where it was."""
    cfg = _kron_config()
    replicas = []
    for rank_seed in (11, 12):
        torch.manual_seed(0)
        algo = PPO(SPEC, cfg, torch.device("cpu"))
        torch.manual_seed(rank_seed)
        _train_steps(algo, 6, seed=1)  # the same gradients on both
        assert torch.equal(torch.randn(3), torch.randn(3, generator=torch.Generator().manual_seed(rank_seed))), \
            "the optimizer moved this rank's own generator"
        replicas.append(algo)
    for (name, p), q in zip(replicas[0].net.named_parameters(), replicas[1].net.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_preconditioner_updates_on_kron_torchs_steps():
    """kron_torch's rule, worked by hand: p = clamp(exp(-0.001 (step - 500)), 0.03, 1) with
    heavyball's n = step + 1, and an update once a counter reaches 1/p: every one of the
    first 501 steps, then every 2nd while p >= 1/2 (step <= 500 + 1000 ln 2 = 1193), every
    34th once p is clamped at 0.03 (1/0.03 = 33.3; step > 500 + 1000 ln(1/0.03) = 4007)."""
    schedule = KronTorchPreconditionerSchedule()
    fired = [n for n in range(1, 6001) if schedule(n)]
    gaps = {b: b - a for a, b in zip(fired[:-1], fired[1:], strict=True)}
    assert fired[:501] == list(range(1, 502))
    assert {gap for n, gap in gaps.items() if 502 <= n <= 1190} == {2}
    assert {gap for n, gap in gaps.items() if n >= 4100} == {34}
    assert schedule.probability(1000) == pytest.approx(math.exp(-0.5), rel=1e-6)


def test_kron_takes_kron_torchs_defaults_through_heavyball():
    model = torch.nn.Linear(4, 3)
    optimizer = make_optimizer(model.parameters(), _kron_config())
    group = optimizer.param_groups[0]
    assert isinstance(optimizer.precond_schedule, KronTorchPreconditionerSchedule)
    assert (group["precond_init_scale"], group["lower_bound_beta"], group["precond_lr"]) == (1.0, 0.0, 0.1)
    assert group["max_size_triangular"] == 8192 and group["betas"][0] == 0.9 and group["weight_decay"] == 0.0


def test_a_kron_checkpoint_holds_no_pickle_and_its_schedule_is_never_unpickled(monkeypatch):
    """heavyball would pickle its schedule into the state dict and unpickle it on load, so a
    crafted checkpoint could run code: only the counter is saved, and a loaded state dict's
    pickled schedule is dropped unread."""
    import heavyball.utils

    model = torch.nn.Linear(4, 3)
    optimizer = make_optimizer(model.parameters(), _kron_config())
    for _ in range(600):  # past the every-step phase: the counter is mid-count
        optimizer.zero_grad()
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
    saved = optimizer.state_dict()
    assert "precond_schedule" not in saved["heavyball"]
    counter = saved["heavyball"]["precond_schedule_counter"]
    assert counter == optimizer.precond_schedule.counter and counter > 0

    def refuse(_):
        raise AssertionError("the checkpoint's schedule was unpickled")

    monkeypatch.setattr(heavyball.utils.pickle, "loads", refuse)
    fresh = make_optimizer(model.parameters(), _kron_config())
    crafted = copy.deepcopy(saved)
    crafted["heavyball"]["precond_schedule"] = b"cos\nsystem\n(S'echo pwned'\ntR."  # what an attacker would plant
    fresh.load_state_dict(crafted)
    assert fresh.precond_schedule.counter == counter
