"""Gradient-flow diagnostics any algorithm can switch on: is the network still learning?

Deep and wide networks trained on non-stationary targets lose gradient flow: per-layer
gradient norms collapse and units go dormant (Castanyer et al. 2025). Every
``interval`` updates, :class:`GradientFlow` measures on one minibatch:

- ``diag/grad_norm/<layer>``: gradient norm of each layer's parameters, before clipping;
- ``diag/feature_norm``: mean L2 norm of the torso's output (the features the heads read);
- ``diag/dormant_fraction`` and ``diag/dormant_fraction_tau0.1``: the fraction of ReLU
  units whose mean |activation| over the batch, divided by the mean over their layer, is
  <= tau (tau = 0: never active; Sokar et al. 2023). A conv unit is a channel;
- ``diag/effective_lr``: ||update|| / ||weights|| of the optimizer step, all parameters.

Usage inside ``update()``; every call is a no-op on updates that are not measured::

    self.flow.begin_update()
    with self.flow.capture():
        out = self.net(obs)
    loss.backward()
    self.flow.record_gradients()
    with self.flow.record_step():
        self.optimizer.step()
    metrics.update(self.flow.results())

Only the first minibatch of a measured update is measured. Values stay on the device as
0-d tensors (no synchronisation); hooks exist only during a measured forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

DORMANT_TAUS = {"diag/dormant_fraction": 0.0, "diag/dormant_fraction_tau0.1": 0.1}


def _eager() -> contextlib.AbstractContextManager:
    """Runs a compiled network's measured pass eagerly: code compiled before the hooks were
    added does not call them (dynamo does not guard on hooks added later), so under
    ``perf.compile`` the hooks would see nothing."""
    stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
    return stance("force_eager") if stance is not None else contextlib.nullcontext()


class GradientFlow:
    """Measures gradient flow of ``net`` every ``interval`` updates (0 = never).

    ``features`` is the module whose output the heads read (default ``net.torso``).
    """

    def __init__(self, net: nn.Module, interval: int, features: nn.Module | None = None):
        self.net = net
        self.interval = interval
        self.features = features if features is not None else getattr(net, "torso", None)
        self.layers = {name: module for name, module in net.named_modules() if any(True for _ in module.parameters(recurse=False))}
        self.activations = [m for m in net.modules() if isinstance(m, nn.ReLU)]
        self.updates = 0
        self.armed = False
        self._captured = self._measured_gradients = False
        self._results: dict[str, torch.Tensor] = {}
        self._unit_scores: list[torch.Tensor] = []

    def begin_update(self) -> None:
        """Count one update; arms the measurement on every ``interval``-th (the first included)."""
        self.armed = self.interval > 0 and self.updates % self.interval == 0
        self.updates += 1
        self._captured = self._measured_gradients = False
        self._results, self._unit_scores = {}, []

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Record activations and features during the forward pass inside the block."""
        if not self.armed or self._captured:
            yield
            return
        self._captured = True
        handles = [m.register_forward_hook(self._on_activation) for m in self.activations]
        if self.features is not None:
            handles.append(self.features.register_forward_hook(self._on_features))
        try:
            with _eager():
                yield
        finally:
            for handle in handles:
                handle.remove()
        if self._unit_scores:
            scores = torch.cat(self._unit_scores)
            for tag, tau in DORMANT_TAUS.items():
                self._results[tag] = (scores <= tau).float().mean()
            self._unit_scores = []

    def _on_activation(self, _module, _inputs, output: torch.Tensor) -> None:
        with torch.no_grad():
            # per unit: mean |a| over the batch (and positions, for a conv channel)
            dims = [0, *range(2, output.dim())]
            per_unit = output.detach().abs().mean(dim=dims)
            self._unit_scores.append(per_unit / per_unit.mean().clamp_min(1e-12))

    def _on_features(self, _module, _inputs, output: torch.Tensor) -> None:
        with torch.no_grad():
            self._results["diag/feature_norm"] = output.detach().flatten(1).norm(dim=1).mean()

    def record_gradients(self) -> None:
        """Per-layer gradient norms; call after ``backward()`` and before clipping."""
        if not self.armed or self._measured_gradients:
            return
        self._measured_gradients = True
        with torch.no_grad():
            for name, module in self.layers.items():
                grads = [p.grad for p in module.parameters(recurse=False) if p.grad is not None]
                if grads:
                    self._results[f"diag/grad_norm/{name}"] = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))

    @contextlib.contextmanager
    def record_step(self) -> Iterator[None]:
        """Effective learning rate of the optimizer step inside the block; disarms after it."""
        if not self.armed:
            yield
            return
        params = [p for p in self.net.parameters() if p.requires_grad]
        with torch.no_grad():
            before = [p.detach().clone() for p in params]
        yield
        with torch.no_grad():
            update = torch.stack([(p - b).norm() for p, b in zip(params, before, strict=True)]).norm()
            weights = torch.stack([b.norm() for b in before]).norm()
            self._results["diag/effective_lr"] = update / weights.clamp_min(1e-12)
        self.armed = False

    def results(self) -> dict[str, torch.Tensor]:
        """What the last measured update found (empty on other updates)."""
        out, self._results = self._results, {}
        return out
