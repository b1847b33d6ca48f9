"""Optimizers and the learning-rate schedule, for every algorithm.

``optim.name`` picks torch's RMSprop, Adam or RAdam, TensorFlow's RMSProp (PAAC's code), or
the Kron optimizer (PSGD-Kron, Li 2018) as used by "Stable Gradients for Stable Learning at
Scale" (Castanyer et al. 2025), from the maintained heavyball package.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from . import distributed

if TYPE_CHECKING:
    from .config import Config


def make_optimizer(params, cfg: Config) -> torch.optim.Optimizer:
    """The optimizer ``optim.name`` names, at ``cfg.effective_lr`` (a third of optim.lr for Kron);
    torch's optimizers with the kernel ``perf.optimizer_kernel`` chooses (:func:`optimizer_kernel`)."""
    name, lr = cfg.optim.name, cfg.effective_lr
    params = list(params)
    if name == "rmsprop_tf":
        return RMSpropTF(params, lr=lr, alpha=cfg.optim.alpha, eps=cfg.optim.eps)
    if name == "kron":
        return make_kron(params, lr, cfg.optim.kron_max_size_triangular, distributed.run_seed(cfg))
    kernel = optimizer_kernel(params, cfg)
    foreach = True if kernel == "foreach" else None  # None: torch's own choice (multi-tensor on CUDA, the loop on a CPU)
    if name == "rmsprop":
        optimizer = torch.optim.RMSprop(params, lr=lr, alpha=cfg.optim.alpha, eps=cfg.optim.eps, foreach=foreach)
    elif name == "radam":
        optimizer = torch.optim.RAdam(params, lr=lr, eps=cfg.optim.eps, foreach=foreach)
    else:
        optimizer = torch.optim.Adam(params, lr=lr, eps=cfg.optim.eps, foreach=foreach, fused=kernel == "fused" or None)
    optimizer.register_load_state_dict_post_hook(keep_the_kernel_chosen)
    return optimizer


def keep_the_kernel_chosen(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict``: the kernel is this run's choice, not the checkpoint's.

    A checkpoint's param groups carry the ``fused``/``foreach`` flags of the run that saved it,
    and loading them would silently swap the kernel this run chose (``perf.optimizer_kernel``,
    a CPU loop saved before ``auto`` fused QR-DQN's Adam, or a CUDA run resumed on a CPU). The
    step counts go where the chosen kernel keeps them, as torch's loading places them for the
    saved kernel: on the parameter's device for the fused one, on the CPU for the others.

    The moments take the parameter's memory layout: loading keeps the checkpoint's strides, and
    a conv weight stored channels-last in one run and not in the other (``perf.channels_last``,
    a GPU run resumed on a CPU) would otherwise meet torch's fused CPU Adam, which walks
    parameter and moments by one flat index without checking their layouts (each weight
    stepped with another element's moments), or its CUDA kernel, which refuses them."""
    kernel = {key: optimizer.defaults[key] for key in ("fused", "foreach") if key in optimizer.defaults}
    for group in optimizer.param_groups:
        group.update(kernel)
        on_device = bool(kernel.get("fused") or group.get("capturable"))
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].to(dtype=torch.float32, device=param.device if on_device else "cpu")
            for key, value in state.items():
                if (isinstance(value, torch.Tensor) and value.shape == param.shape and value.dim() > 1
                        and value.stride() != param.stride()):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


# The algorithms whose Adam ``perf.optimizer_kernel: auto`` fuses on a CPU learner, where torch's
# default loops over the parameters: the replay-based learners, whose small gradient steps it
# sped up (QR-DQN's CartPole and minibatch-8 Atari recipes 1.12x and 1.16x the agent steps/s)
# and whose seed tables held under it. PPO's CartPole recipe gained 1.21x but ended one seed
# of five at 370.6 (494.3 with the loop): fused steps round differently from the loop's.
FUSED_ADAM_CPU_ALGORITHMS = ("qrdqn", "sac")
# The optimizers whose multi-tensor (foreach) kernel steps exactly as torch's loop on a CPU,
# bit for bit: on a CPU each foreach operation runs the loop's own kernel on every tensor in
# turn, and Adam's and RMSprop's multi-tensor steps do the loop's arithmetic in its order
# (RAdam's reorders it: another trajectory). So ``auto`` takes it for them wherever it does
# not fuse, with one Python call per operation for all parameters rather than one per tensor
# (docs/benchmarks.md, perf.optimizer_kernel).
FOREACH_EXACT_ON_CPU = ("adam", "rmsprop")


def optimizer_kernel(params: list[torch.Tensor], cfg: Config) -> str:
    """The kernel torch's optimizer runs for ``params``: ``fused``, ``foreach`` or ``default``.

    ``perf.optimizer_kernel: auto`` is fused Adam on CUDA and, on a CPU, for the algorithms of
    ``FUSED_ADAM_CPU_ALGORITHMS``; foreach on a CPU for the optimizers of
    ``FOREACH_EXACT_ON_CPU`` otherwise; torch's default for the rest."""
    if cfg.perf.optimizer_kernel != "auto":
        return cfg.perf.optimizer_kernel
    devices, name = {p.device.type for p in params}, cfg.optim.name
    if name == "adam" and (devices == {"cuda"} or (devices == {"cpu"} and cfg.algo.name in FUSED_ADAM_CPU_ALGORITHMS)):
        return "fused"
    if devices == {"cpu"} and name in FOREACH_EXACT_ON_CPU:
        return "foreach"
    return "default"


def anneal_lr(optimizers: list[torch.optim.Optimizer], cfg: Config, fraction: float) -> float:
    """Set the LR of ``optimizers`` for a run ``fraction`` done (of ``total_steps``); returns it.

    With ``optim.anneal_lr`` it decays linearly from ``cfg.effective_lr`` to
    ``optim.final_lr_scale`` times that over ``optim.anneal_steps`` agent steps (0: the
    run's ``total_steps``) and stays there: PAAC's code anneals over 80M steps whatever the
    budget, SimbaV2 ends at half its LR.
    """
    lr = cfg.effective_lr
    if cfg.optim.anneal_lr:
        horizon = cfg.optim.anneal_steps or cfg.total_steps
        done = min(1.0, max(0.0, fraction * cfg.total_steps / horizon))
        lr *= 1.0 - (1.0 - cfg.optim.final_lr_scale) * done
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr
    return lr


class RMSpropTF(torch.optim.Optimizer):
    """RMSProp with TensorFlow's semantics, as PAAC's code trains with it:

        ms <- alpha ms + (1 - alpha) g^2,   ms starting at 1
        w  <- w - lr g / sqrt(ms + eps)

    torch's RMSprop starts ``ms`` at 0 and adds ``eps`` outside the square root, so with
    PAAC's eps = 0.1 its first steps are about 10x larger (lr g / (sqrt((1 - alpha) g^2) + eps)).
    """

    def __init__(self, params, lr: float, alpha: float = 0.99, eps: float = 0.1):
        if lr <= 0 or not 0.0 <= alpha < 1.0 or eps < 0:
            raise ValueError(f"invalid RMSpropTF settings lr={lr}, alpha={alpha}, eps={eps}")
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            squares = []
            for p in params:
                state = self.state[p]
                if "square_avg" not in state:
                    state["square_avg"] = torch.ones_like(p, memory_format=torch.preserve_format)
                squares.append(state["square_avg"])
            alpha = group["alpha"]
            torch._foreach_mul_(squares, alpha)
            torch._foreach_addcmul_(squares, grads, grads, value=1.0 - alpha)
            denominators = torch._foreach_add(squares, group["eps"])
            torch._foreach_sqrt_(denominators)
            torch._foreach_addcdiv_(params, grads, denominators, value=-group["lr"])
        return loss


class KronTorchPreconditionerSchedule:
    """When to update Kron's preconditioner, exactly as ``kron_torch.Kron`` (the Stable
    Gradients paper's optimizer) decides it: with p(n) = clamp(exp(-0.001 (n - 500)), 0.03, 1)
    at step n (from 0), a counter updates it once the counter reaches 1/p and starts over, so
    every step for the first 500, then ever more rarely down to every 34th step. heavyball's
    own schedule sums probabilities instead and updates about 17% more often.

    heavyball calls it with its step count (from 1) and keeps it in the optimizer's state
    dict, counter included, so a resumed run updates on the same steps.
    """

    def __init__(self, max_prob: float = 1.0, min_prob: float = 0.03, decay: float = 0.001, flat_start: int = 500):
        self.max_prob, self.min_prob, self.decay, self.flat_start = max_prob, min_prob, decay, flat_start
        self.counter = 0

    def probability(self, step: int) -> float:
        """kron_torch's p at its step ``step`` (from 0), in float32 as it computes it."""
        f32 = torch.float32
        exponent = -torch.tensor(self.decay, dtype=f32) * (torch.tensor(step, dtype=f32) - torch.tensor(self.flat_start, dtype=f32))
        return float((torch.tensor(self.max_prob, dtype=f32) * torch.exp(exponent)).clamp(self.min_prob, self.max_prob))

    def __call__(self, n: int) -> float:
        self.counter += 1
        if self.counter >= 1 / self.probability(n - 1):
            self.counter = 0
            return 1.0
        return 0.0


def make_kron(params, lr: float, max_size_triangular: int, noise_seed: int = 0) -> torch.optim.Optimizer:
    """heavyball's PSGDKron with ``kron_torch.Kron``'s defaults, run eagerly, whose state
    survives a checkpoint exactly.

    kron_torch is the paper's Kron; heavyball is the maintained package that implements it.
    Where their defaults differ, heavyball is given kron_torch's: its preconditioner-update
    steps, a preconditioner starting at the identity (init scale 1), no running lower bound
    of the step size's normaliser, one power iteration for it, and updates scaled to an RMS
    of at most 1.1. Left different (docs/results.md): how a convolution's 4-D weight is split
    into factors, the noise added to the preconditioner's input, and how often the factors
    are rebalanced. That noise is drawn from a stream of ``noise_seed`` and the step's number
    (:func:`draw_from_a_stream_every_rank_shares`). heavyball is imported here so that only
    Kron runs pay for its import.
    """
    import functools

    import heavyball

    # heavyball compiles its step with torch.compile by default: on CPU the first step of
    # a two-layer MLP took 209 s to compile and later steps were no faster
    heavyball.utils.compile_mode = None
    # LR annealing sets a new LR every update: heavyball supports that with multi_tensor=True
    # but still warns, once per process, that it is experimental; a fixed init scale is
    # kron_torch's choice, which heavyball also warns about once
    warnings.filterwarnings("ignore", message="Learning rate changed between steps", category=UserWarning)
    warnings.filterwarnings("ignore", message="It.s recommended to use precond_init_scale=None")
    optimizer = heavyball.PSGDKron(
        params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0,
        preconditioner_update_probability=KronTorchPreconditionerSchedule(),
        max_size_triangular=max_size_triangular, min_ndim_triangular=2, memory_save_mode=None,
        momentum_into_precond_update=True, precond_lr=0.1, precond_init_scale=1.0,
        lower_bound_beta=0.0, precond_update_power_iterations=1,
        update_clipping=functools.partial(heavyball.utils.rmsnorm_clip_, clip_at=1.1),
        merge_dims=False, multi_tensor=True,
    )
    draw_from_a_stream_every_rank_shares(optimizer, noise_seed)
    _keep_state_dtypes(optimizer)
    _schedule_as_plain_data(optimizer)
    return optimizer


def _schedule_as_plain_data(optimizer: torch.optim.Optimizer) -> None:
    """heavyball saves its schedule object pickled inside the state dict and unpickles it on
    load: a checkpoint could then run code, which ``weights_only`` loading exists to prevent.
    The schedule is ours, so only its counter is saved (an int), and a loaded state dict's
    pickled schedule is dropped before heavyball's own hook could unpickle it."""

    def save_counter(optimizer, state_dict):
        stats = state_dict.get("heavyball", {})
        stats.pop("precond_schedule", None)
        stats["precond_schedule_counter"] = int(optimizer.precond_schedule.counter)

    def restore_counter(optimizer, state_dict):
        stats = state_dict.get("heavyball", {})
        stats.pop("precond_schedule", None)  # never unpickled (an older checkpoint's restarts the counter)
        optimizer.precond_schedule.counter = int(stats.pop("precond_schedule_counter", 0))

    optimizer.register_state_dict_post_hook(save_counter)
    optimizer.register_load_state_dict_pre_hook(restore_counter, prepend=True)


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


def draw_from_a_stream_every_rank_shares(optimizer: torch.optim.Optimizer, seed: int) -> None:
    """Make each ``optimizer.step()`` draw its random numbers from a stream seeded by ``seed``
    and the step's number, leaving torch's global generators as they were.

    Kron adds random noise to each preconditioner update, drawn from torch's global generator;
    but every rank of a data-parallel run seeds that one differently (its minibatches, its
    acting), so the ranks' preconditioners, and then their weights, would part although the
    gradients they step with are the same average. The step's number is heavyball's own count,
    which a checkpoint keeps: a resumed run goes on with the draws it would have made."""
    step = optimizer.step
    optimizer.shared_draws_step = 0

    def step_with_shared_draws(closure=None):
        devices = sorted({p.device.index or 0 for group in optimizer.param_groups for p in group["params"] if p.is_cuda})
        with torch.random.fork_rng(devices=devices):
            stream = seed * 1_000_003 + optimizer.shared_draws_step
            torch.default_generator.manual_seed(stream)
            for index in devices:
                torch.cuda.default_generators[index].manual_seed(stream)
            result = step(closure)
        optimizer.shared_draws_step += 1
        return result

    def resume_the_count(loaded: torch.optim.Optimizer) -> None:
        loaded.shared_draws_step = int(loaded.param_groups[0].get("step_count", 0))

    optimizer.step = step_with_shared_draws
    optimizer.register_load_state_dict_post_hook(resume_the_count)
