"""Gradient-flow diagnostics: definitions on a hand-built network, the interval, and a deep
configuration with the interventions that trains with finite losses and logs every tag."""

import math

import pytest
import torch
from torch import nn

from parallel_rl.diagnostics import GradientFlow


def _probe_net():
    # unit 0 never fires, unit 1 barely (0.05), units 2 and 3 at 1: layer mean 0.5125
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([-1.0, 0.05, 1.0, 1.0]))
        net[2].weight.fill_(0.5)
    return net


def _measured_update(flow, net, optimizer, x):
    flow.begin_update()
    with flow.capture():
        loss = net(x).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    flow.record_gradients()
    with flow.record_step():
        optimizer.step()
    return flow.results()


def test_definitions_on_a_known_network():
    net = _probe_net()
    flow = GradientFlow(net, interval=1, features=net[1])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    grads = {}

    def keep_grads():
        grads.update({name: p.grad.clone() for name, p in net.named_parameters()})

    flow.begin_update()
    with flow.capture():
        loss = net(torch.ones(8, 2)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    keep_grads()
    flow.record_gradients()
    with flow.record_step():
        optimizer.step()
    out = flow.results()

    # dormant: score = mean|a| / layer mean = 0, 0.098, 1.95, 1.95
    assert out["diag/dormant_fraction"].item() == pytest.approx(0.25)
    assert out["diag/dormant_fraction_tau0.1"].item() == pytest.approx(0.5)
    # features: every sample's ReLU output is [0, .05, 1, 1]
    assert out["diag/feature_norm"].item() == pytest.approx(math.sqrt(0.05**2 + 2))
    for layer in ("0", "2"):
        expected = torch.cat([grads[f"{layer}.weight"].flatten(), grads[f"{layer}.bias"]]).norm()
        assert out[f"diag/grad_norm/{layer}"].item() == pytest.approx(expected.item(), rel=1e-5)
    # SGD: the update is lr x gradient
    update = 0.1 * torch.cat([g.flatten() for g in grads.values()]).norm()
    weights = torch.cat([b.flatten() for b in before]).norm()
    assert out["diag/effective_lr"].item() == pytest.approx((update / weights).item(), rel=1e-5)


class _ProbeModule(nn.Module):
    """The probe net as a module of its own class (dynamo compiles such a forward; it leaves
    torch.nn's own containers to eager)."""

    def __init__(self):
        super().__init__()
        self.inner = _probe_net()

    def forward(self, x):
        return self.inner[2](self.inner[1](self.inner[0](x)))


@pytest.mark.slow  # compiling, even a tiny network, takes seconds on 2 cores
def test_a_compiled_network_is_measured_as_an_eager_one():
    """Under perf.compile the measured forward pass still calls the hooks, with no recompiling."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    results = {}
    for compiled in (False, True):
        torch.manual_seed(0)  # the same random bias of the output layer
        net = _ProbeModule()
        if compiled:
            net.compile()
        flow = GradientFlow(net, interval=2, features=net.inner[1])
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        results[compiled] = [_measured_update(flow, net, optimizer, torch.ones(8, 2)) for _ in range(5)]
    assert counters["stats"]["unique_graphs"] == 1  # the unmeasured updates compiled once, the measured ran eagerly
    for eager, compiled in zip(results[False], results[True], strict=True):
        assert eager.keys() == compiled.keys()
        for tag, value in eager.items():
            assert compiled[tag].item() == pytest.approx(value.item(), rel=1e-5), tag
    assert results[True][0]["diag/dormant_fraction"].item() == pytest.approx(0.25)


def test_measures_every_kth_update_and_leaves_no_hooks():
    net = _probe_net()
    flow = GradientFlow(net, interval=3, features=net[1])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    measured = [bool(_measured_update(flow, net, optimizer, torch.ones(4, 2))) for _ in range(7)]
    assert measured == [True, False, False, True, False, False, True]
    assert not any(m._forward_hooks for m in net.modules())
    assert not any(_measured_update(GradientFlow(net, 0), net, optimizer, torch.ones(4, 2)) for _ in range(3))


def test_only_the_first_minibatch_of_an_update_is_measured():
    net = _probe_net()
    flow = GradientFlow(net, interval=1, features=net[1])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    flow.begin_update()
    for minibatch in range(2):
        if minibatch == 1:  # every unit alive: measuring this one would report 0 dormant
            with torch.no_grad():
                net[0].bias.fill_(1.0)
        with flow.capture():
            loss = net(torch.ones(8, 2)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        flow.record_gradients()
        with flow.record_step():
            optimizer.step()
    assert flow.results()["diag/dormant_fraction"].item() == pytest.approx(0.25)


@pytest.mark.slow
@pytest.mark.parametrize(("optimizer", "updates"), [
    ("adam", 300),
    # Kron's preconditioner updates cost about 1.3 s a step at this size on two CPU cores
    # (benchmarks/kron_cost.py): a few dozen steps show it keeps the deep network finite
    ("kron", 30),
])
def test_deep_wide_network_with_the_interventions_trains_and_logs_the_diagnostics(tmp_path, optimizer, updates):
    """The paper's largest torso (5 multi-skip blocks of width 1536 with LayerNorm) trained
    by PPO on CPU: losses stay finite, nothing is skipped and every diagnostics tag is written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from parallel_rl.config import build_config
    from parallel_rl.runtime.runner import Runner

    num_envs, horizon = 4, 8
    cfg = build_config("ppo_classic", {"seed": 0}, [
        "model.torso=multiskip", "model.depth=5", "model.width=1536", "model.layer_norm=true",
        f"optim.name={optimizer}", "torch_threads=2",
        # Kron keeps diagonal preconditioners for dimensions above this: full 1536 x 1536
        # triangular factors cost seconds a step on two cores (the GPU recipes keep 8192)
        "optim.kron_max_size_triangular=512",
        f"actors.num_envs={num_envs}", f"algo.rollout_length={horizon}", "algo.update_epochs=1", "algo.num_minibatches=1",
        f"total_steps={updates * num_envs * horizon}", f"logging.diag_interval={updates // 6}", "logging.interval_s=0",
        "logging.console=false", "checkpoint.interval_steps=0",
    ])
    summary = Runner(cfg, tmp_path / "run").run()
    assert summary.updates == updates
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("diag/feature_norm", "diag/dormant_fraction", "diag/dormant_fraction_tau0.1", "diag/effective_lr"):
        assert tag in tags, sorted(tags)
    layer_norms = [t for t in tags if t.startswith("diag/grad_norm/")]
    assert len(layer_norms) >= 5, sorted(tags)  # one per block at least
    assert acc.Scalars("diag/nonfinite_updates")[-1].value == 0
    for tag in ("losses/policy", "losses/value", "losses/total", "diag/grad_norm", *layer_norms):
        values = [e.value for e in acc.Scalars(tag)]
        assert values and all(math.isfinite(v) for v in values), tag


def test_the_largest_gradient_norm_between_writes_is_logged_beside_the_newest():
    """A spike between two writes shows in diag/grad_norm_max though the newest value hides
    it; a skipped (non-finite) update counts in neither, and each write starts over."""
    from parallel_rl.contracts import Delivery, UpdateResult
    from parallel_rl.metrics import GRAD_NORM_MAX_TAG, UpdateStats
    from parallel_rl.runtime.learner import UpdateRecord

    def record(norm, skipped=0.0):
        result = UpdateResult(metrics={"diag/grad_norm": torch.tensor(norm)}, skipped_steps=torch.tensor(skipped))
        return UpdateRecord(step=0, updates=0, delivery=Delivery(batch=None), result=result, lr=1e-3, seconds=0.0)

    stats = UpdateStats()
    for norm in (0.05, 0.9, 0.04):
        stats.add(record(norm))
    stats.add(record(float("inf"), skipped=1.0))
    first = stats.scalars()
    assert first["diag/grad_norm"] == pytest.approx(0.04)
    assert first[GRAD_NORM_MAX_TAG] == pytest.approx(0.9)
    stats.add(record(0.06))
    assert stats.scalars()[GRAD_NORM_MAX_TAG] == pytest.approx(0.06)


def test_the_largest_step_of_a_many_step_update_feeds_the_maximum_and_lags_are_summed_as_they_come():
    """PPO, PQN and QR-DQN log the mean of their optimizer steps' gradient norms: a tenfold
    spike in one of 16 minibatch steps showed in diag/grad_norm_max as 1.6-fold. Their
    largest step now feeds the maximum, and is no tag of its own. The lags of the deliveries
    are kept as a running sum, count and maximum, not one entry per delivery."""
    from parallel_rl.contracts import GRAD_NORM_STEP_MAX, Delivery, UpdateResult
    from parallel_rl.metrics import GRAD_NORM_MAX_TAG, UpdateStats
    from parallel_rl.runtime.learner import UpdateRecord

    def record(mean, largest, lags):
        result = UpdateResult(metrics={"diag/grad_norm": torch.tensor(mean), GRAD_NORM_STEP_MAX: torch.tensor(largest)})
        return UpdateRecord(step=0, updates=0, delivery=Delivery(batch=None, lag=lags), result=result, lr=1e-3, seconds=0.0)

    stats = UpdateStats()
    stats.add(record(0.16, 1.0, [0, 2]))
    stats.add(record(0.1, 0.12, [1]))
    written = stats.scalars()
    assert written["diag/grad_norm"] == pytest.approx(0.1) and written[GRAD_NORM_MAX_TAG] == pytest.approx(1.0)
    assert GRAD_NORM_STEP_MAX not in written
    assert written["diag/policy_lag"] == pytest.approx(1.0) and written["diag/policy_lag_max"] == 2
    stats.add(record(0.1, 0.12, []))
    assert "diag/policy_lag" not in stats.scalars()  # each write starts over


@pytest.mark.parametrize("recipe", ["ppo_classic", "pqn_classic"])
def test_many_step_updates_give_their_largest_steps_gradient_norm(recipe):
    from parallel_rl.algos import make_algorithm
    from parallel_rl.bench import fixed_batch
    from parallel_rl.config import build_config
    from parallel_rl.contracts import GRAD_NORM_STEP_MAX
    from parallel_rl.envs import env_spec

    cfg = build_config(recipe, {"actors.num_envs": 4}, ["logging.diag_interval=0"])
    algo = make_algorithm(env_spec(cfg.env), cfg, torch.device("cpu"))
    metrics = algo.update(fixed_batch(cfg, torch.device("cpu"))).metrics
    # the minibatches' norms differ: their largest lies above their mean, which the key held before
    assert float(metrics[GRAD_NORM_STEP_MAX]) > float(metrics["diag/grad_norm"]) > 0


def test_sacs_many_step_updates_give_their_largest_steps_gradient_norm():
    """SAC takes several gradient steps an update (algo.publish_interval): diag/grad_norm_max
    must be the largest of them, not the largest of the updates' means."""
    from parallel_rl.algos import make_algorithm
    from parallel_rl.bench import fixed_batch
    from parallel_rl.config import build_config
    from parallel_rl.contracts import GRAD_NORM_STEP_MAX
    from parallel_rl.envs import env_spec

    cfg = build_config("simbav2_pendulum", {"actors.num_envs": 4}, ["algo.warmup_steps=8", "replay.minibatch_size=16"])
    algo = make_algorithm(env_spec(cfg.env), cfg, torch.device("cpu"))
    batch = fixed_batch(cfg, torch.device("cpu"))
    algo.update(batch)  # the warm-up's transitions
    metrics = algo.update(batch).metrics
    assert float(metrics["diag/gradient_steps"]) >= 4
    assert float(metrics[GRAD_NORM_STEP_MAX]) > float(metrics["diag/grad_norm"]) > 0

