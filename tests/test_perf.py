"""Performance switches change speed, not results: `perf.compile` gives the losses and weights
of eager execution on a fixed batch, and really compiles (dynamo's counters, no fallback)."""

import copy
from dataclasses import replace

import pytest
import torch

from parallel_rl.algos import make_algorithm, make_policy
from parallel_rl.bench import fixed_batch
from parallel_rl.config import ConfigError, build_config
from parallel_rl.envs import env_spec

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test here compares two variants' arithmetic, at one torch thread. oneDNN sums a
    convolution's weight gradient in an order that depends on the thread count (an Intel
    AVX-512 CPU at two threads put a weight of ppo_atari's first Adam step a whole step, 2.6e-4,
    from the other layout's), and an earlier test in the same process may have set it (a run
    sets its learner's threads), so the outcome would depend on the tests before it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _seeded_algorithm(recipe: str, overrides: list[str], **perf):
    """``recipe``'s algorithm with 4 envs and the given ``perf.*`` settings, from the same
    initial weights and minibatch shuffles as every other variant compared; float32 unless
    ``amp`` is given (``perf.amp: auto`` would pick bf16 for an Atari network on a CPU with bf16
    units, and the other switches are compared in float32)."""
    perf = {"amp": "off", **perf}
    cfg = build_config(recipe, {"actors.num_envs": 4, **{f"perf.{k}": v for k, v in perf.items()}}, overrides)
    torch.manual_seed(1)
    return make_algorithm(env_spec(cfg.env), cfg, CPU)


def _losses_and_weights(algo, batch) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One update on ``batch``: its losses/ tags and the policy's weights after it."""
    metrics = algo.update(batch).metrics
    return ({tag: float(v) for tag, v in metrics.items() if tag.startswith("losses/")},
            {k: v.clone() for k, v in algo.policy().state_dict().items()})


def assert_same_update(got, expected, rel: float = 1e-5, weight_abs: float = 1e-6) -> None:
    """Two ``_losses_and_weights`` results agree within ``rel`` (and 1e-6 absolute; weights
    within ``weight_abs``)."""
    (losses, weights), (expected_losses, expected_weights) = got, expected
    assert losses.keys() == expected_losses.keys() and losses
    for tag, value in expected_losses.items():
        assert losses[tag] == pytest.approx(value, rel=rel, abs=1e-6), tag
    for key, value in expected_weights.items():
        assert torch.allclose(weights[key], value, rtol=rel, atol=weight_abs), key


@pytest.mark.slow  # compiling forward and backward on 2 cores takes tens of seconds
@pytest.mark.parametrize("recipe", ["ppo_classic", "pqn_classic", "ppo_atari"])  # ppo_atari: what auto compiles
def test_compiled_update_equals_eager_and_really_compiles(recipe):
    from torch._dynamo.utils import counters

    base = build_config(recipe, {"actors.num_envs": 4}, ["algo.update_epochs=1", "logging.diag_interval=0"])
    batch = fixed_batch(base, CPU)
    results = {}
    for compiled in (False, True):
        torch._dynamo.reset()
        counters.clear()
        results[compiled] = _losses_and_weights(
            _seeded_algorithm(recipe, ["algo.update_epochs=1", "logging.diag_interval=0"], compile=compiled), batch)
        if compiled:
            assert counters["stats"]["unique_graphs"] >= 1  # dynamo captured the network
            assert not counters["graph_break"], dict(counters["graph_break"])  # no silent fallback to eager
    (eager_losses, eager_weights), (compiled_losses, compiled_weights) = results[False], results[True]
    assert eager_losses.keys() == compiled_losses.keys() and eager_losses
    for tag, value in eager_losses.items():
        assert compiled_losses[tag] == pytest.approx(value, rel=1e-4, abs=1e-6), tag
    for key, value in eager_weights.items():
        assert torch.allclose(compiled_weights[key], value, rtol=1e-4, atol=1e-6), key
    assert eager_weights.keys() == compiled_weights.keys()  # the state_dict keys of a checkpoint are unchanged


def test_compile_auto_compiles_only_a_convolutional_encoder_on_a_cpu_in_a_long_run(monkeypatch):
    import parallel_rl.algos as algos

    atari, cartpole = build_config("ppo_atari"), build_config("ppo_classic")
    atari_spec, cartpole_spec = env_spec(atari.env), env_spec(cartpole.env)
    assert atari.perf.compile == "auto" and atari.total_steps >= algos.COMPILE_AUTO_MIN_STEPS
    monkeypatch.setattr(algos, "inductor_builds_code", lambda device="cpu": True)
    assert algos.compiles(atari, atari_spec, CPU)
    assert not algos.compiles(atari, atari_spec, torch.device("cuda"))  # no win measured on a GPU yet
    assert not algos.compiles(build_config("ppo_atari", {"total_steps": 999_999}), atari_spec, CPU)  # start-up not repaid
    assert not algos.compiles(replace(cartpole, total_steps=10**7), cartpole_spec, CPU)  # an MLP loses (0.90x)
    qrdqn = build_config("qrdqn_atari", {"total_steps": 10**7})
    assert not algos.compiles(qrdqn, atari_spec, CPU)  # replayed minibatches of 32 lose (0.94x)
    # one update per rollout: 1.00x once the convolutions run channels-last
    assert not algos.compiles(build_config("paac_atari", {"total_steps": 10**7}), atari_spec, CPU)
    assert not algos.compiles(build_config("paac_atari", {"total_steps": 10**7, "algo.name": "impala"}), atari_spec, CPU)
    assert algos.compiles(build_config("pqn_atari", {"total_steps": 10**7}), atari_spec, CPU)
    assert algos.compiles(build_config("ppo_classic", {"perf.compile": True}), cartpole_spec, CPU)  # asked for: on
    assert not algos.compiles(build_config("ppo_atari", {"perf.compile": False}), atari_spec, CPU)
    monkeypatch.setattr(algos, "inductor_builds_code", lambda device="cpu": False)
    assert not algos.compiles(atari, atari_spec, CPU)  # no C++ compiler, headers or OpenMP: eager, not a failed run

    # and auto really compiles the network the learner and acting share, once an algorithm is built
    monkeypatch.setattr(algos, "inductor_builds_code", lambda device="cpu": True)
    net = make_algorithm(atari_spec, atari, CPU).policy().net
    assert net._compiled_call_impl is not None
    net = make_algorithm(atari_spec, build_config("ppo_atari", {"total_steps": 2048}), CPU).policy().net
    assert net._compiled_call_impl is None


def test_cuda_graphs_compile_the_cuda_network_with_reduce_overhead_and_leave_cpu_replicas_to_perf_compile():
    from parallel_rl.algos import compile_mode

    cartpole = build_config("ppo_classic", {"perf.cuda_graphs": True})
    spec = env_spec(cartpole.env)
    assert compile_mode(cartpole, spec, torch.device("cuda")) == "reduce-overhead"
    assert compile_mode(cartpole, spec, CPU) is None  # an acting replica on a CPU: perf.compile's choice (auto: an MLP, off)
    assert compile_mode(replace(cartpole, perf=replace(cartpole.perf, compile=True)), spec, CPU) == "default"
    assert compile_mode(build_config("ppo_classic"), spec, torch.device("cuda")) is None  # off by default
    # that the graphs are recorded and give eager's losses is the GPU check's switches section


@pytest.mark.parametrize("recipe", ["ppo_atari", "paac_atari"])  # the Nature CNN; the NIPS CNN with LayerNorm
def test_channels_last_update_equals_the_default_layout_and_really_runs_nhwc(recipe):
    overrides = (["algo.update_epochs=1"] if recipe == "ppo_atari" else []) + ["logging.diag_interval=0"]
    batch = fixed_batch(build_config(recipe, {"actors.num_envs": 4}, overrides), CPU)
    results, layouts = {}, {}
    for channels_last in (False, True):
        algo = _seeded_algorithm(recipe, overrides, channels_last=channels_last, compile=False)
        layouts[channels_last] = _conv_input_layouts(algo.policy().net, batch.obs[0])
        results[channels_last] = _losses_and_weights(algo, batch)
    assert not any(layouts[False])
    # the frames enter NHWC; after a LayerNorm over (C, H, W) (paac_atari) torch's kernel hands
    # the next convolution NCHW, without one (ppo_atari) every convolution stays NHWC
    assert layouts[True][0] and (all(layouts[True]) or recipe == "paac_atari")
    # Adam's first step is about lr x sign(gradient): other convolution kernels' rounding in a
    # near-zero gradient moves a weight by up to 1% of PPO's 2.5e-4 step (2e-6 measured)
    assert_same_update(results[True], results[False], rel=1e-4, weight_abs=1e-5)
    assert results[True][1].keys() == results[False][1].keys()


def test_channels_last_leaves_qrdqns_target_network_in_the_default_layout_with_the_same_outputs():
    cfg = build_config("qrdqn_atari", {"actors.num_envs": 4})
    obs = torch.randint(0, 256, (4, *env_spec(cfg.env).obs_shape), dtype=torch.uint8)
    outputs = {}
    for channels_last in (False, True):
        algo = _seeded_algorithm("qrdqn_atari", [], channels_last=channels_last, compile=False)
        assert _conv_input_layouts(algo.policy().net, obs) == [channels_last] * 3  # the Nature CNN
        assert _conv_input_layouts(algo.target_net, obs) == [False] * 3  # copied before: targets only, never a gradient
        with torch.no_grad():
            outputs[channels_last] = algo.policy().net(obs)
    assert torch.allclose(outputs[True], outputs[False], rtol=1e-4, atol=1e-5)


def _conv_input_layouts(net: torch.nn.Module, obs: torch.Tensor) -> list[bool]:
    """For each convolution of ``net`` on ``obs``, in order: whether its input arrived channels-last."""
    seen: list[bool] = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(
        args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous()))
        for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net(obs)
    for hook in hooks:
        hook.remove()
    return seen


def test_channels_last_auto_is_on_for_convolutions_on_a_cpu_only():
    from parallel_rl.algos import uses_channels_last

    atari, cartpole = build_config("paac_atari"), build_config("ppo_classic")
    atari_spec, cartpole_spec = env_spec(atari.env), env_spec(cartpole.env)
    assert atari.perf.channels_last == "auto"
    assert uses_channels_last(atari, atari_spec, CPU)
    assert not uses_channels_last(atari, atari_spec, torch.device("cuda"))  # not measured on a GPU yet
    assert not uses_channels_last(build_config("ppo_classic", {"perf.channels_last": True}), cartpole_spec, CPU)  # no convolution
    assert not uses_channels_last(build_config("paac_atari", {"perf.channels_last": False}), atari_spec, CPU)
    assert uses_channels_last(build_config("paac_atari", {"perf.channels_last": True}), atari_spec, torch.device("cuda"))
    with pytest.raises(ConfigError, match=r"perf.channels_last = .*Valid choices: auto, true, false"):
        build_config("paac_atari", {"perf.channels_last": "yes"})


def test_weights_published_from_an_nhwc_network_load_into_one_in_the_default_layout():
    """An actor process (or a checkpoint) may hold the other layout: the published vector
    and the state_dict are the same tensors whatever the layout."""
    from parallel_rl.runtime.slots import SharedWeights

    float32 = {"perf.compile": False, "perf.amp": "off"}  # bf16 would round the two layouts apart
    cfg = build_config("paac_atari", {"actors.num_envs": 4})
    spec = env_spec(cfg.env)
    torch.manual_seed(3)
    nhwc = make_policy(spec, build_config("paac_atari", {"perf.channels_last": True, **float32}), CPU)
    nchw = make_policy(spec, build_config("paac_atari", {"perf.channels_last": False, **float32}), CPU)
    obs = torch.randint(0, 256, (3, *spec.obs_shape), dtype=torch.uint8)
    slots = SharedWeights(nhwc.net)
    slots.publish(nhwc.net, 1)
    assert slots.fetch(nchw.net, exactly=1) == 1
    with torch.no_grad():
        for got, expected in zip(nchw.net(obs), nhwc.net(obs), strict=True):
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    fresh = make_policy(spec, build_config("paac_atari", {"perf.channels_last": False, **float32}), CPU)
    fresh.load_state_dict(nhwc.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), nhwc.state_dict().values(), strict=True))


@pytest.mark.parametrize("value", [1, 0, "yes", "on"])
def test_perf_compile_takes_auto_true_or_false_only(value):
    with pytest.raises(ConfigError, match=r"perf.compile = .*Valid choices: auto, true, false"):
        build_config("ppo_atari", {"perf.compile": value})
    assert build_config("ppo_atari", overrides=["perf.compile=true"]).perf.compile is True


@pytest.mark.parametrize("recipe", ["ppo_classic", "paac_classic"])
def test_bf16_autocast_update_is_close_to_float32_and_really_runs_in_bf16(recipe):
    """`perf.amp: bf16` (GPUs, and CPUs with bf16 units): the network's layers compute
    in bfloat16, its outputs, the losses, weights and state dict stay float32, and the
    losses of one update on a fixed batch match float32's to bfloat16's precision."""
    overrides = ["algo.update_epochs=1"] if recipe == "ppo_classic" else []
    overrides.append("logging.diag_interval=0")
    batch = fixed_batch(build_config(recipe, {"actors.num_envs": 4}, overrides), CPU)
    results = {}
    for amp in ("off", "bf16"):
        algo = _seeded_algorithm(recipe, overrides, amp=amp)
        network = algo.policy().net
        layer_dtypes = []
        first_linear = next(m for m in network.modules() if isinstance(m, torch.nn.Linear))
        first_linear.register_forward_hook(lambda module, args, out, seen=layer_dtypes: seen.append(out.dtype))
        outputs = network(batch.obs[0])
        metrics = algo.update(batch).metrics
        results[amp] = {tag: float(v) for tag, v in metrics.items() if tag.startswith("losses/")}
        assert set(layer_dtypes) == {torch.bfloat16 if amp == "bf16" else torch.float32}
        assert all(out.dtype == torch.float32 for out in outputs)
        assert all(v.dtype == torch.float32 for v in network.state_dict().values() if v.is_floating_point())
    assert results["off"].keys() == results["bf16"].keys() and results["off"]
    for tag, value in results["off"].items():
        assert results["bf16"][tag] == pytest.approx(value, rel=5e-2, abs=1e-2), tag


@pytest.mark.parametrize("units", [True, False])
def test_bf16_acting_replica_autocasts_only_where_the_device_has_bf16_units(monkeypatch, units):
    """An acting replica (actor processes, evaluation) follows `perf.amp: bf16` on a device with
    bfloat16 units of its own, and keeps float32 on a CPU that would emulate it (slower); the
    learner's network follows the setting either way, and the layout line says which it is."""
    import parallel_rl.algos as algos
    from parallel_rl.runtime.runner import amp_note

    monkeypatch.setattr(algos, "native_bf16", lambda device: units)
    cfg = build_config("paac_classic", {"actors.num_envs": 4, "perf.amp": "bf16"})
    spec = env_spec(cfg.env)
    replica = make_policy(spec, cfg, CPU).net
    seen = []
    next(m for m in replica.modules() if isinstance(m, torch.nn.Linear)).register_forward_hook(
        lambda module, args, out: seen.append(out.dtype))
    with torch.inference_mode():
        outputs = replica(torch.zeros(2, *spec.obs_shape))
    assert seen == [torch.bfloat16 if units else torch.float32]
    assert all(out.dtype == torch.float32 for out in outputs)
    assert "forward" in vars(make_algorithm(spec, cfg, CPU).policy().net)  # the learner autocasts regardless
    monkeypatch.setattr("parallel_rl.runtime.runner.native_bf16", lambda device: units)
    assert ("emulated" in amp_note(cfg, CPU)) is not units and "bf16 (perf.amp" in amp_note(cfg, CPU)
    assert ("actor processes act in float32" in amp_note(cfg, CPU, actor_device=CPU)) is not units
    assert amp_note(build_config("paac_classic", {"perf.amp": "off"}), CPU) == ""


@pytest.mark.parametrize("units", [True, False])
def test_bf16_auto_is_for_convolutional_networks_on_cpus_with_bf16_units(monkeypatch, units):
    """`perf.amp: auto` (the default) autocasts where bf16 was measured to win and to learn: PAAC's,
    PPO's and PQN's convolutional encoder on a CPU with bf16 units; other algorithms, an MLP, a CPU that
    would emulate bf16 and a GPU (slower at the recipes' batches) keep float32. The learner's choice
    is what its actor processes follow, whatever their own device. The layout line says when auto
    chose bf16."""
    import parallel_rl.algos as algos
    from parallel_rl.runtime.runner import amp_note

    monkeypatch.setattr(algos, "native_bf16", lambda device: units)
    monkeypatch.setattr("parallel_rl.runtime.runner.native_bf16", lambda device: units)
    atari, classic = build_config("paac_atari"), build_config("paac_classic")
    assert atari.perf.amp == classic.perf.amp == "auto"
    atari_spec, classic_spec = env_spec(atari.env), env_spec(classic.env)
    assert algos.uses_bf16(atari, atari_spec, CPU) is units
    assert not algos.uses_bf16(classic, classic_spec, CPU)
    assert not algos.uses_bf16(atari, atari_spec, torch.device("cuda"))
    assert algos.uses_bf16(replace(atari, perf=replace(atari.perf, amp="bf16")), classic_spec, CPU)
    assert not algos.uses_bf16(replace(atari, perf=replace(atari.perf, amp="off")), atari_spec, CPU)
    for learning in ("ppo_atari", "pqn_atari"):
        assert algos.uses_bf16(build_config(learning), atari_spec, CPU) is units, learning
    assert not algos.uses_bf16(build_config("qrdqn_atari"), atari_spec, CPU)
    assert not algos.uses_bf16(build_config("paac_atari", {"algo.name": "impala"}), atari_spec, CPU)
    gpu_learner = algos.with_amp_resolved(atari, atari_spec, torch.device("cuda"))
    assert gpu_learner.perf.amp == "off" and not algos.uses_bf16(gpu_learner, atari_spec, CPU)  # its CPU actors too
    cpu_learner = algos.with_amp_resolved(atari, atari_spec, CPU)
    assert cpu_learner.perf.amp == ("bf16" if units else "off")
    assert ("perf.amp: auto, this CPU has bf16 units" in amp_note(cpu_learner, CPU, auto=True)) is units
    assert amp_note(algos.with_amp_resolved(classic, classic_spec, CPU), CPU, auto=True) == ""
    seen = []
    network = make_policy(atari_spec, atari, CPU).net
    next(m for m in network.modules() if isinstance(m, torch.nn.Linear)).register_forward_hook(
        lambda module, args, out: seen.append(out.dtype))
    with torch.inference_mode():
        network(torch.zeros(1, *atari_spec.obs_shape, dtype=torch.uint8))
    assert seen == [torch.bfloat16 if units else torch.float32]


def test_bf16_units_are_the_hardwares_not_what_torch_can_emulate(monkeypatch):
    """oneDNN and torch.cuda report bf16 as supported where they would emulate it (any AVX-512
    CPU, GPUs before compute capability 8): `native_bf16` asks for the units themselves."""
    import platform

    import parallel_rl.algos as algos

    check = algos.native_bf16.__wrapped__  # past the per-process cache
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    flags = {"avx512_f": True, "avx512_bf16": False, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags, raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert check(CPU) is False  # AVX-512 without bf16 units: emulated, though oneDNN says supported
    flags["avx512_bf16"] = True
    assert check(CPU) is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN kept below its bf16 instructions
    assert check(CPU) is False
    flags["avx512_bf16"], flags["amx_bf16"] = False, True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert check(CPU) is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check(torch.device("cuda")) is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, units in (((7, 0), False), ((8, 0), True), ((9, 0), True)):  # V100; A100; H100
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: c)
        assert check(torch.device("cuda:0")) is units


@pytest.mark.parametrize("recipe", ["ppo_classic", "qrdqn_classic"])
def test_fused_adam_update_equals_torchs_default_adam_and_really_fuses(recipe):
    """`perf.optimizer_kernel: fused` (auto's choice): torch's fused Adam
    kernel, the same losses and weights as torch's default Adam after one update."""
    overrides = ["algo.update_epochs=1"] if recipe == "ppo_classic" else ["algo.warmup_steps=0", "replay.minibatch_size=16"]
    overrides += ["logging.diag_interval=0", "optim.name=adam"]
    batch = fixed_batch(build_config(recipe, {"actors.num_envs": 4}, overrides), CPU)
    results = {}
    for kernel in ("default", "fused"):
        algo = _seeded_algorithm(recipe, overrides, optimizer_kernel=kernel)
        with pytest.MonkeyPatch.context() as patched:
            fused_calls = _counted_calls(patched, torch, "_fused_adam_")
            results[kernel] = _losses_and_weights(algo, batch)
        assert bool(fused_calls) == (kernel == "fused")  # the fused kernel ran, and only when asked for
    assert_same_update(results["fused"], expected=results["default"])


def _counted_calls(patch: pytest.MonkeyPatch, owner, name: str) -> list[int]:
    """The calls of ``owner.name`` (an optimizer's kernel) from now on, counted through ``patch``."""
    calls, kernel = [], getattr(owner, name)
    patch.setattr(owner, name, lambda *a, **k: (calls.append(1), kernel(*a, **k))[1])
    return calls


@pytest.mark.parametrize(("recipe", "optimizer"), [("ppo_classic", "adam"), ("paac_classic", "adam"), ("paac_classic", "rmsprop")])
def test_the_foreach_kernel_steps_exactly_as_torchs_loop_on_a_cpu(recipe, optimizer):
    """`perf.optimizer_kernel: foreach` (auto's choice on a CPU for the on-policy algorithms'
    Adam and RMSprop) runs torch's multi-tensor kernel, and three updates give the loop's
    losses and weights bit for bit, so the seeded learning tests keep their trajectories."""
    import importlib

    multi_tensor = (importlib.import_module(f"torch.optim.{optimizer}"), f"_multi_tensor_{optimizer}")
    overrides = ["logging.diag_interval=0", f"optim.name={optimizer}"]
    batch = fixed_batch(build_config(recipe, {"actors.num_envs": 4}, overrides), CPU)
    results = {}
    for kernel in ("default", "foreach"):
        algo = _seeded_algorithm(recipe, overrides, optimizer_kernel=kernel)
        torch.manual_seed(2)
        with pytest.MonkeyPatch.context() as patched:
            foreach_calls = _counted_calls(patched, *multi_tensor)
            results[kernel] = [_losses_and_weights(algo, batch) for _ in range(3)]
        assert bool(foreach_calls) == (kernel == "foreach")  # the multi-tensor kernel ran, and only when asked for
    for (losses, weights), (loop_losses, loop_weights) in zip(results["foreach"], results["default"], strict=True):
        assert losses == loop_losses and losses
        assert weights.keys() == loop_weights.keys()
        for key, value in loop_weights.items():
            assert torch.equal(weights[key], value), key


def test_fused_adam_skips_a_nonfinite_step_on_the_device_without_reading_it_on_the_host(no_host_syncs):
    """With the fused kernel a NaN/inf loss or gradient skips the step through its found_inf:
    weights and moments untouched, the step counter not advanced, and no tensor read back
    (``bool``, ``item`` or ``float`` of a tensor would be a host sync on a GPU)."""
    from parallel_rl.algos.base import step_if_finite
    from parallel_rl.optim import make_optimizer

    cfg = build_config("ppo_classic", {"perf.optimizer_kernel": "fused", "optim.name": "adam"})
    layer = torch.nn.Linear(3, 2)
    optimizer = make_optimizer(layer.parameters(), cfg)
    x = torch.ones(4, 3)

    def step(scale: float) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = layer(x * scale).pow(2).mean()
        loss.backward()
        with no_host_syncs():
            return step_if_finite(optimizer, loss)

    assert torch.equal(step(1.0), torch.tensor(True))
    weights = {k: v.clone() for k, v in layer.state_dict().items()}
    moments = {k: v.clone() for k, v in optimizer.state[layer.weight].items()}
    for bad in (float("nan"), float("inf")):
        assert torch.equal(step(bad), torch.tensor(False))
        for key, value in layer.state_dict().items():
            assert torch.equal(value, weights[key]), key
        for key, value in optimizer.state[layer.weight].items():
            assert torch.equal(value, moments[key]), key  # "step" stays 1: the kernel's count is taken back
    assert torch.equal(step(1.0), torch.tensor(True))
    assert not torch.equal(layer.weight, weights["weight"]) and float(optimizer.state[layer.weight]["step"]) == 2.0


def test_fused_optimizer_kernel_needs_adam_and_foreach_needs_torchs_optimizers():
    from parallel_rl.config import ConfigError

    with pytest.raises(ConfigError, match="perf.optimizer_kernel = 'fused' needs optim.name = 'adam'.*no fused rmsprop_tf"):
        build_config("paac_atari_paper", {"perf.optimizer_kernel": "fused"})
    with pytest.raises(ConfigError, match="perf.optimizer_kernel = 'foreach' needs torch's adam, rmsprop or radam, but optim.name = 'kron'"):
        build_config("ppo_atari_stable", {"perf.optimizer_kernel": "foreach"})
    assert build_config("paac_atari_paper", {"perf.optimizer_kernel": "auto"}).perf.optimizer_kernel == "auto"
    assert build_config("pqn_classic", {"perf.optimizer_kernel": "foreach"}).perf.optimizer_kernel == "foreach"


@pytest.mark.parametrize(("saved", "resumed"), [("default", "fused"), ("fused", "default"), ("default", "foreach"), ("foreach", "fused")])
def test_a_resumed_adam_keeps_its_own_kernel_and_continues_the_saved_run(saved, resumed, monkeypatch):
    """A checkpoint's optimizer groups carry the kernel of the run that saved it. Loaded as
    they were, they swapped the kernel under the resuming run: a QR-DQN run saved before
    ``auto`` fused its Adam on a CPU crashed at its first step (the fused kernel's skip flag
    handed to torch's loop), and a fused checkpoint made a loop run fused. The resumed run
    keeps the kernel it chose, and its next update is the one the saved run takes."""
    overrides = ["algo.update_epochs=1", "logging.diag_interval=0"]
    batch = fixed_batch(build_config("ppo_classic", {"actors.num_envs": 4}, overrides), CPU)
    original = _seeded_algorithm("ppo_classic", overrides, optimizer_kernel=saved)
    original.update(batch)
    resuming = _seeded_algorithm("ppo_classic", overrides, optimizer_kernel=resumed)
    resuming.load_state_dict(copy.deepcopy(original.state_dict()))
    for group in resuming.optimizer.param_groups:
        assert (bool(group["fused"]), bool(group["foreach"])) == (resumed == "fused", resumed == "foreach")
    torch.manual_seed(2)
    expected = _losses_and_weights(original, batch)
    fused_calls = _counted_calls(monkeypatch, torch, "_fused_adam_")
    torch.manual_seed(2)
    got = _losses_and_weights(resuming, batch)
    assert bool(fused_calls) == (resumed == "fused")
    assert_same_update(got, expected=expected)


def test_a_resumed_rmsprop_keeps_the_multi_tensor_kernel_auto_chose():
    """RMSprop checkpoints carry their ``foreach`` flag too: a PAAC run saved before ``auto``
    took the multi-tensor kernel on a CPU resumes with it, and steps as the saved run would."""
    import torch.optim.rmsprop as rmsprop_module

    from parallel_rl.optim import make_optimizer

    def trained(kernel: str) -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
        torch.manual_seed(0)
        layer = torch.nn.Linear(3, 2)
        return layer, make_optimizer(layer.parameters(), build_config("paac_atari", {"perf.optimizer_kernel": kernel}))

    def step(layer: torch.nn.Linear, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad()
        layer(torch.ones(4, 3)).pow(2).mean().backward()
        optimizer.step()

    saved_layer, saved = trained("default")
    step(saved_layer, saved)
    resumed_layer, resumed = trained("auto")
    resumed_layer.load_state_dict(saved_layer.state_dict())
    resumed.load_state_dict(copy.deepcopy(saved.state_dict()))
    assert isinstance(resumed, torch.optim.RMSprop) and all(group["foreach"] for group in resumed.param_groups)
    with pytest.MonkeyPatch.context() as patched:
        calls = _counted_calls(patched, rmsprop_module, "_multi_tensor_rmsprop")
        step(resumed_layer, resumed)
    step(saved_layer, saved)
    assert calls and all(torch.equal(a, b) for a, b in zip(resumed_layer.parameters(), saved_layer.parameters(), strict=True))


@pytest.mark.parametrize("saved_channels_last", [False, True])
def test_a_resumed_fused_adam_steps_a_conv_stored_in_another_layout_as_the_saved_run(saved_channels_last):
    """Loading an optimizer keeps the checkpoint's strides. A conv weight stored channels-last
    in one run and not in the other (``perf.channels_last``, a GPU run resumed on a CPU) left
    Adam's moments in the saved layout, and torch's fused CPU kernel, which walks parameter
    and moments by one flat index, stepped each weight with another element's moments."""
    from parallel_rl.optim import make_optimizer

    cfg = build_config("qrdqn_atari", {"perf.optimizer_kernel": "fused"})

    def conv(channels_last: bool) -> torch.nn.Conv2d:
        torch.manual_seed(0)
        layer = torch.nn.Conv2d(4, 8, 3)
        return layer.to(memory_format=torch.channels_last) if channels_last else layer

    def step(layer: torch.nn.Conv2d, optimizer: torch.optim.Optimizer, seed: int) -> None:
        torch.manual_seed(seed)
        optimizer.zero_grad()
        layer(torch.randn(2, 4, 6, 6)).pow(2).mean().backward()
        optimizer.step()

    saved_layer = conv(saved_channels_last)
    saved = make_optimizer(saved_layer.parameters(), cfg)
    step(saved_layer, saved, seed=1)
    resumed_layer = conv(not saved_channels_last)
    resumed_layer.load_state_dict(saved_layer.state_dict())
    resumed = make_optimizer(resumed_layer.parameters(), cfg)
    resumed.load_state_dict(copy.deepcopy(saved.state_dict()))
    assert resumed.state[resumed_layer.weight]["exp_avg"].stride() == resumed_layer.weight.stride()
    step(saved_layer, saved, seed=2)
    step(resumed_layer, resumed, seed=2)
    torch.testing.assert_close(resumed_layer.weight, saved_layer.weight, rtol=1e-5, atol=1e-6)


def test_optimizer_kernel_auto_on_a_cpu_fuses_the_replay_learners_adam_and_takes_foreach_where_it_equals_the_loop():
    """``auto`` on a CPU: the fused kernel for QR-DQN's and SAC's Adam (measured faster, their
    seed tables held); the multi-tensor kernel for the other algorithms' Adam and RMSprop
    (the loop's very steps); torch's loop for RAdam, whose multi-tensor step rounds
    differently. ``default`` keeps torch's choice; ``fused`` fuses whatever the algorithm."""
    from parallel_rl.optim import make_optimizer

    def kernel(recipe: str, setting: str = "auto") -> tuple[type, str]:
        optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(3))], build_config(recipe, {"perf.optimizer_kernel": setting}))
        flags = optimizer.defaults
        return type(optimizer), "fused" if flags.get("fused") else "foreach" if flags["foreach"] else "loop"

    assert kernel("qrdqn_classic") == kernel("simbav2_pendulum") == kernel("sac_mujoco") == (torch.optim.Adam, "fused")
    assert kernel("ppo_classic") == kernel("paac_classic") == (torch.optim.Adam, "foreach")
    assert kernel("paac_atari") == (torch.optim.RMSprop, "foreach")
    assert kernel("pqn_classic") == (torch.optim.RAdam, "loop")
    assert kernel("qrdqn_classic", "default") == kernel("ppo_classic", "default") == (torch.optim.Adam, "loop")
    assert kernel("ppo_classic", "fused") == (torch.optim.Adam, "fused") and kernel("pqn_classic", "foreach") == (torch.optim.RAdam, "foreach")


@pytest.mark.parametrize("recipe", ["ppo_classic", "pqn_classic"])
def test_an_update_reusing_the_acting_values_equals_one_that_recomputes_them(recipe):
    """With no policy lag PPO and PQN take the values of the batch's observations from the
    acting pass (`Batch.behaviour_values`), not from a second pass over the whole batch: the
    same losses and weights as recomputing them, and no forward pass over the batch."""
    import copy

    overrides = ["algo.update_epochs=1", "logging.diag_interval=0"]
    cfg = build_config(recipe, {"actors.num_envs": 4}, overrides)
    batch = fixed_batch(cfg, CPU)
    torch.manual_seed(0)  # fixed_batch acted with the weights of this seed
    reusing = make_algorithm(env_spec(cfg.env), cfg, CPU)
    recomputing = copy.deepcopy(reusing)
    recomputing.reuses_acting_values = False
    assert reusing.reuses_acting_values  # the recipes' default: no lag

    values = reusing.policy().act_and_value(batch.obs.flatten(0, 1))[2]
    assert torch.allclose(batch.behaviour_values.flatten(), values, rtol=1e-5, atol=1e-6)  # the acting pass's values

    batch_sizes = []
    reusing.net.register_forward_pre_hook(lambda module, args: batch_sizes.append(len(args[0])))
    results = {}
    for name, algo in (("reusing", reusing), ("recomputing", recomputing)):
        torch.manual_seed(1)  # the same minibatch shuffles
        results[name] = _losses_and_weights(algo, batch)
    assert batch.num_steps + 4 not in batch_sizes and 4 in batch_sizes  # only the next observations were evaluated
    assert_same_update(results["reusing"], expected=results["recomputing"])


def test_values_are_recomputed_where_the_acting_weights_may_be_stale():
    lagged_ppo = build_config("ppo_classic", {"actors.num_envs": 4, "actors.procs": 2}, ["actors.max_policy_lag=1"])
    assert not make_algorithm(env_spec(lagged_ppo.env), lagged_ppo, CPU).reuses_acting_values
    lagged = build_config("pqn_classic", {"actors.num_envs": 4, "actors.procs": 2}, ["actors.max_policy_lag=2"])
    assert not make_algorithm(env_spec(lagged.env), lagged, CPU).reuses_acting_values


@pytest.mark.parametrize("recipe", ["ppo_classic", "pqn_classic"])
def test_on_policy_updates_take_the_transitions_found_on_the_host(recipe, monkeypatch):
    """`Batch.from_arrays` finds which steps are transitions (not auto-resets) on the host,
    before the copy to the device; PPO and PQN learn from those indices and call no
    `nonzero` in the update (its data-dependent size would stall a GPU learner until the
    batch landed): the same update as finding them from `autoreset` in the update."""
    import dataclasses

    overrides = ["algo.update_epochs=1", "logging.diag_interval=0"]
    batch = fixed_batch(build_config(recipe, {"actors.num_envs": 4}, overrides), CPU)
    expected_indices = (~batch.autoreset).flatten().nonzero().squeeze(1)
    assert 0 < len(expected_indices) < batch.num_steps  # CartPole's episodes end within the rollout
    assert torch.equal(batch.transition_indices, expected_indices)

    found_in_update = _losses_and_weights(_seeded_algorithm(recipe, overrides), dataclasses.replace(batch, transition_indices=None))
    with monkeypatch.context() as patched:
        for name in ("nonzero", "argwhere"):
            patched.setattr(torch.Tensor, name, lambda *_, name=name: pytest.fail(f"the update called Tensor.{name}"))
            patched.setattr(torch, name, lambda *_, name=name: pytest.fail(f"the update called torch.{name}"))
        found_on_host = _losses_and_weights(_seeded_algorithm(recipe, overrides), batch)
    assert_same_update(found_on_host, expected=found_in_update, rel=0)


def test_a_delivery_split_into_pieces_gives_each_its_transitions_without_asking_the_device(monkeypatch):
    """A replay learner that publishes within a rollout learns from pieces of it
    (``Delivery.split``); the pieces found their transitions with ``nonzero`` on the device,
    a host sync per piece on a GPU. The host's counts of transitions before each step now
    give each piece its own indices: those ``autoreset`` gives, with no ``nonzero`` called."""
    from parallel_rl.contracts import Delivery

    batch = fixed_batch(build_config("qrdqn_classic", {"actors.num_envs": 4, "algo.rollout_length": 16}), CPU)
    assert 0 < len(batch.transition_indices) < batch.num_steps  # CartPole's episodes end within the rollout
    with monkeypatch.context() as patched:
        for name in ("nonzero", "argwhere"):
            patched.setattr(torch.Tensor, name, lambda *_, name=name: pytest.fail(f"the split called Tensor.{name}"))
            patched.setattr(torch, name, lambda *_, name=name: pytest.fail(f"the split called torch.{name}"))
        pieces = [d.batch for d in Delivery(batch).split(5)]  # 5 + 5 + 5 + 1 steps
        found = [piece.transitions() for piece in pieces]
        halves = [half.transitions() for half in (pieces[1].steps(0, 2), pieces[1].steps(2, 5))]  # a piece split again
    assert [p.horizon for p in pieces] == [5, 5, 5, 1]
    for piece, indices in zip(pieces, found, strict=True):
        assert torch.equal(indices, (~piece.autoreset).flatten().nonzero().squeeze(1))
    assert torch.equal(torch.cat([halves[0], halves[1] + 2 * 4]), found[1])


def test_acting_runs_in_inference_mode_and_gives_what_no_grad_gives():
    """Rollouts act under `torch.inference_mode` (no version counters or view tracking); the
    actions, log-probabilities and values are those of the same pass under no_grad, and the
    per-env acting streams advance (host counters: nothing of them becomes an inference
    tensor that a later in-place update outside inference mode would refuse)."""
    import numpy as np

    from parallel_rl.runtime.rollout import NetworkPolicy

    cfg = build_config("ppo_classic", {"actors.num_envs": 4})
    torch.manual_seed(0)
    policy = make_policy(env_spec(cfg.env), cfg, CPU)
    modes = []
    act_and_value = policy.act_and_value
    policy.act_and_value = lambda obs: (modes.append(torch.is_inference_mode_enabled()), act_and_value(obs))[1]
    obs = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    acting = NetworkPolicy(policy, CPU, first_env_seed=1, num_envs=4)
    actions, log_probs, values = acting(obs, slice(0, 4))
    assert modes == [True]
    assert isinstance(acting.streams.steps, np.ndarray) and acting.streams.steps.tolist() == [1, 1, 1, 1]

    with torch.no_grad():
        replay = NetworkPolicy(policy, CPU, first_env_seed=1, num_envs=4)
        with replay.streams.acting(slice(0, 4)):
            expected = act_and_value(torch.from_numpy(obs))
    for got, want in zip((actions, log_probs, values), expected, strict=True):
        assert np.array_equal(got, want.numpy())

    # the learner's own network where the learner records CUDA graphs of it: no_grad, since a
    # first recording in inference mode breaks the learner's recordings (pytorch#135892)
    grad = []
    policy.act_and_value = lambda obs: (modes.append(torch.is_inference_mode_enabled()), grad.append(torch.is_grad_enabled()),
                                        act_and_value(obs))[2]
    NetworkPolicy(policy, CPU, first_env_seed=1, num_envs=4, learns_in_cuda_graphs=True)(obs, slice(0, 4))
    assert modes == [True, False] and grad == [False]


@pytest.mark.parametrize(("cuda_graphs", "device", "learns_in_graphs"), [
    (True, "cuda", True), (False, "cuda", False), (True, "cpu", False)])
def test_inline_acting_leaves_inference_mode_only_where_the_learner_records_cuda_graphs(monkeypatch, cuda_graphs, device,
                                                                                       learns_in_graphs):
    from parallel_rl.runtime import pipeline

    cfg = build_config("ppo_classic", {"actors.num_envs": 2, "perf.cuda_graphs": cuda_graphs})
    made = []
    monkeypatch.setattr(pipeline, "NetworkPolicy", lambda *args, **kwargs: made.append(kwargs))
    monkeypatch.setattr(pipeline, "make_env_groups", lambda *args: [])
    monkeypatch.setattr(pipeline, "RolloutCollector", lambda *args: None)

    class Algo:
        def policy(self):
            return None

    pipeline.InlineSource(cfg, env_spec(cfg.env), Algo(), torch.device(device), 1)
    assert made == [{"learns_in_cuda_graphs": learns_in_graphs}]


def _openmp_settings(extra_env: dict[str, str]) -> dict[str, str]:
    """What torch's libgomp says it runs with (OMP_DISPLAY_ENV) in a fresh process that imports
    parallel_rl, then torch, with ``extra_env`` set and the user's OpenMP variables removed."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update({"OMP_DISPLAY_ENV": "VERBOSE", **extra_env})
    out = subprocess.run([sys.executable, "-c", "import parallel_rl, torch; torch.ones(64, 64).sum()"],
                         capture_output=True, text=True, env=env, timeout=120, check=True)
    settings = {}
    for line in out.stderr.splitlines():
        name, _, value = line.strip().partition(" = ")
        if name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
            settings[name] = value.strip("'")
    return settings


def test_openmp_threads_spin_briefly_unless_the_user_chose_a_spin_or_a_wait_policy():
    """Importing the package before torch shortens libgomp's spin after each parallel region
    (300,000 turns by default) to 10,000, so the env threads get the cores back; libgomp
    itself reports the value it runs with. A user's GOMP_SPINCOUNT or OMP_WAIT_POLICY wins."""
    from parallel_rl import OPENMP_SPIN_COUNT

    assert _openmp_settings({})["GOMP_SPINCOUNT"] == OPENMP_SPIN_COUNT == "10000"
    assert _openmp_settings({"GOMP_SPINCOUNT": "300000"})["GOMP_SPINCOUNT"] == "300000"
    assert _openmp_settings({"OMP_WAIT_POLICY": "PASSIVE"})["GOMP_SPINCOUNT"] == "0"
    assert _openmp_settings({"OMP_WAIT_POLICY": "ACTIVE"}) == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "30000000000"}
