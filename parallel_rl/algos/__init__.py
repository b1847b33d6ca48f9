"""Algorithms: one file each, declaring its config section and registering itself by the
name used in ``algo.name`` (registry.py); importing this package registers them all."""

from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import replace
from pathlib import Path

import torch

from ..config import CONFIG_DIR, Config, ConfigError, algorithm_class, load_yaml, recipe_names
from ..contracts import Algorithm, Policy
from ..envs import EnvSpec
from ..nn.actor_critic import encoder_kind
from ..nn.blocks import ConvEncoder, smallest_image_side
from . import impala, paac, ppo, pqn, qrdqn, sac  # noqa: F401  (each registers its algorithm)
from .ppo import EpochsConfig

IMAGE_ENCODERS = ("nips_cnn", "nature_cnn")


def make_algorithm(spec: EnvSpec, cfg: Config, device: torch.device) -> Algorithm:
    check_fit(cfg, spec)
    algo = algorithm_class(cfg.algo.name)(spec, cfg, device)
    apply_perf(algo.policy(), spec, cfg, device)
    return algo


def make_policy(spec: EnvSpec, cfg: Config, device: torch.device) -> Policy:
    """The algorithm's Policy alone (actor processes, evaluation): no critic, optimizer or replay."""
    check_fit(cfg, spec)
    policy = algorithm_class(cfg.algo.name).make_policy(spec, cfg).to(device)
    # an acting replica (actor processes, evaluation) follows perf.amp only where bfloat16 has units
    # of its own: a CPU without them converts every operand and acts slower than in float32
    acting = cfg if native_bf16(device) else replace(cfg, perf=replace(cfg.perf, amp="off"))
    apply_perf(policy, spec, acting, device)
    return policy


# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) that stop short of computing bf16
ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in units of its own: a GPU's bf16 tensor cores (compute
    capability 8 or more), or a CPU with AVX512_BF16 or AMX. There ``perf.amp: bf16`` was measured
    faster than float32 (docs/benchmarks.md, perf.amp). Elsewhere torch and oneDNN emulate it, slower
    than float32, while still reporting bf16 as supported: so this asks the hardware, not them."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        try:  # on Arm, oneDNN's answer is whether the CPU has the BF16 extension
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch built without oneDNN
            return False
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in ONEDNN_ISAS_WITHOUT_BF16:
        return False  # oneDNN told to keep below the instructions that compute bf16
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # newer torch only
    if capabilities is not None:
        flags = capabilities()
        return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))
    try:
        return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", Path("/proc/cpuinfo").read_text()))
    except OSError:
        return False



def apply_perf(policy: Policy, spec: EnvSpec, cfg: Config, device: torch.device) -> None:
    """The ``perf`` switches, in place on the forward pass of the Policy's network, or of the
    Policy itself where it holds no separate network (SAC's actor); parameters, buffers and
    state_dict keys stay as they are, and the learner's losses call the same network.
    ``perf.channels_last`` lays out its convolutions, ``perf.amp`` wraps the forward pass, then
    ``perf.compile`` compiles it (autocast included). A target network copied before (QR-DQN's,
    PQN has none) keeps float32 eager in the default layout: it computes targets only, never a
    gradient."""
    network = policy.net if isinstance(getattr(policy, "net", None), torch.nn.Module) else policy
    if uses_channels_last(cfg, spec, device):
        for module in network.modules():
            if isinstance(module, ConvEncoder):
                module.to_channels_last()
    if uses_bf16(cfg, spec, device):
        network.forward = AutocastForward(network, device.type)
    if (mode := compile_mode(cfg, spec, device)) is not None:
        network.compile(mode=mode)


# where perf.amp: auto picks bf16: measured faster (docs/benchmarks.md, perf.amp) and seen to learn Pong
# with it (docs/results.md); IMPALA, QR-DQN and SAC keep float32 until they are too
AMP_AUTO_ALGORITHMS = ("paac", "ppo", "pqn")


def uses_bf16(cfg: Config, spec: EnvSpec, device: torch.device) -> bool:
    """Whether ``perf.amp`` runs the network's forward pass under bfloat16 autocast on ``device``.
    ``auto``: PAAC's, PPO's and PQN's convolutional encoder on a CPU with bf16 units of its own; float32
    for other algorithms, MLPs, CPUs that would emulate bf16, and GPUs (slower at the recipes'
    batch sizes there)."""
    if cfg.perf.amp != "auto":
        return cfg.perf.amp == "bf16"
    return spec.is_image and cfg.algo.name in AMP_AUTO_ALGORITHMS and device.type == "cpu" and native_bf16(device)


def with_amp_resolved(cfg: Config, spec: EnvSpec, learner: torch.device) -> Config:
    """``cfg`` with ``perf.amp: auto`` replaced by what it picks for the learner on ``learner``, so
    that acting replicas on another device (actor processes on the CPU of a GPU learner) follow
    the learner's precision rather than choosing their own."""
    if cfg.perf.amp != "auto":
        return cfg
    return replace(cfg, perf=replace(cfg.perf, amp="bf16" if uses_bf16(cfg, spec, learner) else "off"))


def uses_channels_last(cfg: Config, spec: EnvSpec, device: torch.device) -> bool:
    """Whether ``perf.channels_last`` puts the network's convolutions in NHWC layout on
    ``device``. ``auto``: on a CPU, where oneDNN's convolutions were measured faster in it
    (docs/benchmarks.md); a network without convolutions has nothing to change."""
    if not spec.is_image:
        return False
    if cfg.perf.channels_last != "auto":
        return bool(cfg.perf.channels_last)
    return device.type == "cpu"


COMPILE_AUTO_MIN_STEPS = 1_000_000


def compiles(cfg: Config, spec: EnvSpec, device: torch.device) -> bool:
    """Whether ``perf.compile`` compiles the network that runs on ``device``. ``auto`` compiles
    only where it was measured to win (docs/benchmarks.md), on top of ``perf.channels_last``:
    a convolutional encoder on a CPU learning from each rollout in epochs of minibatches (PQN
    1.08x, PPO 1.03x), not PAAC's or IMPALA's one update per rollout (1.00x) nor QR-DQN's
    replayed minibatches of 8 to 32 (0.94x), in a run long enough to repay the start-up, where
    inductor can build CPU code."""
    if cfg.perf.compile != "auto":
        return bool(cfg.perf.compile)
    return (device.type == "cpu" and spec.is_image and isinstance(cfg.algo, EpochsConfig)
            and cfg.total_steps >= COMPILE_AUTO_MIN_STEPS and inductor_builds_code("cpu"))


def refuse_unbuildable_compile(cfg: Config, device: torch.device) -> None:
    """``perf.compile: true`` where inductor cannot build code for ``device``: a one-paragraph
    error before anything starts, not inductor's traceback at the first forward pass
    (``auto`` stays eager there instead)."""
    if cfg.perf.compile is True and not inductor_builds_code(str(device)):
        needs = "a C++ compiler, Python's headers and OpenMP" + (" and Triton" if device.type == "cuda" else "")
        raise ConfigError(f"perf.compile = true asks torch.compile for the network on {device.type}, but inductor cannot "
                          f"build {device.type} code on this machine (it needs {needs}): install what is missing, or "
                          "use perf.compile=auto (compiles only where it can and wins) or perf.compile=false.")


def compile_mode(cfg: Config, spec: EnvSpec, device: torch.device) -> str | None:
    """torch.compile's mode for the network on ``device``, or None to run it eagerly."""
    if cfg.perf.cuda_graphs and device.type == "cuda":
        return "reduce-overhead"  # inductor's CUDA graph trees: forward and backward recorded per shape
    return "default" if compiles(cfg, spec, device) else None


@functools.cache
def inductor_builds_code(device: str = "cpu") -> bool:
    """Whether inductor can build and run code for ``device`` here (``cpu``, ``cuda:1``): on a
    CPU it needs a C++ compiler, Python's headers and OpenMP (on CUDA, Triton as well), and a
    machine missing one would otherwise fail at the run's first forward pass. A one-line
    function, compiled once per process and device (seconds; inductor caches the build on
    disk). On a GPU it runs there, so ask with the learner's own GPU: a bare ``cuda`` is the
    current one, GPU 0 until a rank has chosen its own, and a probe there leaves a CUDA
    context (about half a GB) on GPU 0 for the life of the process."""
    try:
        double = torch.compile(lambda x: x * 2.0 + 1.0, fullgraph=True)
        return bool(double(torch.ones(4, device=device)).eq(3.0).all())
    except Exception:  # whatever failed (no compiler, no headers, no OpenMP), compiling the network would fail too
        return False


class AutocastForward:
    """``module``'s own forward under bfloat16 autocast, floating outputs cast back to float32
    so that every loss is computed in float32. Held by the module itself, so a deep copy of
    the module autocasts its own forward, not the original's."""

    def __init__(self, module: torch.nn.Module, device_type: str):
        self.module, self.device_type = module, device_type

    def __call__(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = type(self.module).forward(self.module, *args, **kwargs)
        return torch.utils._pytree.tree_map(
            lambda x: x.float() if isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16 else x, out)


def _recipes_for(image: bool, continuous: bool) -> list[str]:
    """The shipped recipes that fit observations and actions of this kind."""
    names = []
    for name in recipe_names():
        data = load_yaml(CONFIG_DIR / f"{name}.yaml")
        algo, encoder = data.get("algo", {}).get("name", "paac"), data.get("model", {}).get("encoder", "auto")
        if algorithm_class(algo).continuous_actions == continuous and (encoder in IMAGE_ENCODERS) == image:
            names.append(name)
    return names


def check_fit(cfg: Config, spec: EnvSpec) -> None:
    """Refuse, before anything starts, a configuration whose network or algorithm cannot take
    this environment's observations or actions; the message names the fix."""
    algo, encoder = cfg.algo.name, cfg.model.encoder
    wants_continuous = algorithm_class(algo).continuous_actions
    if wants_continuous is None:  # an algorithm for actions of either kind
        wants_continuous = not spec.discrete
    obs = f"image observations {spec.obs_shape}" if spec.is_image else f"vector observations of shape {spec.obs_shape}"
    actions = f"discrete actions ({spec.action_space})" if spec.discrete else f"continuous actions ({spec.action_space})"
    fitting = ", ".join(f"--config {r}" for r in _recipes_for(spec.is_image, not spec.discrete)) or "none ships"
    if wants_continuous == spec.discrete or (wants_continuous and spec.is_image):
        needs = "continuous actions and vector observations" if wants_continuous else "discrete actions"
        raise ConfigError(f"algo.name = {algo!r} needs {needs}, but {spec.id} has {actions} and {obs}. "
                          f"Recipes that fit {spec.id}: {fitting}.")
    if encoder in IMAGE_ENCODERS and not spec.is_image:
        raise ConfigError(f"model.encoder = {encoder!r} is a convolutional encoder for images, but {spec.id} has {obs}. "
                          f"Set --set model.encoder=mlp, or use a recipe for such environments: {fitting}.")
    if encoder not in IMAGE_ENCODERS and encoder != "auto" and spec.is_image:
        raise ConfigError(f"model.encoder = {encoder!r} encodes vectors, but {spec.id} has {obs}. "
                          f"Set --set model.encoder=nature_cnn (or nips_cnn), or use a recipe for such environments: {fitting}.")
    kind = encoder_kind(cfg.model, spec)
    if kind in IMAGE_ENCODERS and min(spec.obs_shape[1:]) < smallest_image_side(kind):
        sides = ", ".join(f"{k} {smallest_image_side(k)}" for k in IMAGE_ENCODERS)
        raise ConfigError(f"{spec.id}'s image observations {spec.obs_shape} are too small for model.encoder = {kind!r}: "
                          f"its convolutions need at least {smallest_image_side(kind)} pixels a side ({sides}). "
                          f"Set env.image_size to {smallest_image_side(kind)} or more (84 is the standard).")


__all__ = ["check_fit", "compile_mode", "compiles", "make_algorithm", "make_policy", "policy_lag_bound"]
