"""Algorithms: one file each, declaring its config section and registering itself by the
name used in ``algo.name`` (registry.py); importing this package registers them all."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..config import CONFIG_DIR, Config, ConfigError, algorithm_class, load_yaml
from ..contracts import Algorithm, Policy
from ..envs import EnvSpec
from . import impala, paac, ppo, pqn, qrdqn, sac  # noqa: F401  (each registers its algorithm)

IMAGE_ENCODERS = ("nips_cnn", "nature_cnn")


def make_algorithm(spec: EnvSpec, cfg: Config, device: torch.device) -> Algorithm:
    check_fit(cfg, spec)
    algo = algorithm_class(cfg.algo.name)(spec, cfg, device)
    apply_perf(algo.policy(), cfg, device)
    return algo


def make_policy(spec: EnvSpec, cfg: Config, device: torch.device) -> Policy:
    """The algorithm's Policy alone (actor processes, evaluation): no critic, optimizer or replay."""
    check_fit(cfg, spec)
    policy = algorithm_class(cfg.algo.name).make_policy(spec, cfg).to(device)
    # bf16 pays only on a GPU: an acting replica on the CPU (actor processes, evaluation) keeps float32
    apply_perf(policy, cfg if device.type == "cuda" else replace(cfg, perf=replace(cfg.perf, amp="off")), device)
    return policy


def apply_perf(policy: Policy, cfg: Config, device: torch.device) -> None:
    """The ``perf`` switches, in place on the forward pass of the Policy's network, or of the
    Policy itself where it holds no separate network (SAC's actor); parameters, buffers and
    state_dict keys stay as they are, and the learner's losses call the same network.
    ``perf.amp`` wraps the forward pass, then ``perf.compile`` compiles it (autocast included).
    A target network copied before (QR-DQN's, PQN has none) keeps float32 eager: it computes
    targets only, never a gradient."""
    network = policy.net if isinstance(getattr(policy, "net", None), torch.nn.Module) else policy
    if cfg.perf.amp == "bf16":
        network.forward = AutocastForward(network, device.type)
    if cfg.perf.compile:
        network.compile()


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
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        data = load_yaml(path)
        algo, encoder = data.get("algo", {}).get("name", "paac"), data.get("model", {}).get("encoder", "auto")
        if algorithm_class(algo).continuous_actions == continuous and (encoder in IMAGE_ENCODERS) == image:
            names.append(path.stem)
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


__all__ = ["check_fit", "make_algorithm", "make_policy", "policy_lag_bound"]
