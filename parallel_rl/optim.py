"""The Kron optimizer (PSGD-Kron, Li 2018) as used by "Stable Gradients for Stable Learning
at Scale" (Castanyer et al. 2025), from the maintained heavyball package."""

from __future__ import annotations

import warnings
from typing import Any

import torch


def make_kron(params, lr: float, max_size_triangular: int) -> torch.optim.Optimizer:
    """heavyball's PSGDKron, run eagerly, whose state survives a checkpoint exactly.

    heavyball is imported here so that only Kron runs pay for its import.
    """
    import heavyball

    # heavyball compiles its step with torch.compile by default: on CPU the first step of
    # a two-layer MLP took 209 s to compile and later steps were no faster
    heavyball.utils.compile_mode = None
    # LR annealing sets a new LR every update: heavyball supports that with multi_tensor=True
    # but still warns, once per process, that it is experimental
    warnings.filterwarnings("ignore", message="Learning rate changed between steps", category=UserWarning)
    optimizer = heavyball.PSGDKron(params, lr=lr, max_size_triangular=max_size_triangular, multi_tensor=True)
    _keep_state_dtypes(optimizer)
    return optimizer


def _keep_state_dtypes(optimizer: torch.optim.Optimizer) -> None:
    """torch's ``load_state_dict`` casts every floating state tensor to its parameter's
    dtype, but PSGDKron keeps its running lower bounds in float64: put back the saved ones."""
    saved: dict[str, Any] = {}

    def stash(_optimizer, state_dict):
        saved["state"] = state_dict["state"]

    def restore(optimizer):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for index, state in saved.pop("state", {}).items():
            param = params[index]
            optimizer.state[param] = _with_dtypes_of(optimizer.state[param], state, param.device)

    optimizer.register_load_state_dict_pre_hook(stash)
    optimizer.register_load_state_dict_post_hook(restore)


def _with_dtypes_of(loaded: Any, saved: Any, device: torch.device) -> Any:
    if isinstance(loaded, torch.Tensor) and isinstance(saved, torch.Tensor) and loaded.dtype != saved.dtype:
        return saved.to(device)
    if isinstance(loaded, dict):
        return {key: _with_dtypes_of(value, saved[key], device) for key, value in loaded.items()}
    if isinstance(loaded, (list, tuple)):
        return type(loaded)(_with_dtypes_of(a, b, device) for a, b in zip(loaded, saved, strict=True))
    return loaded
