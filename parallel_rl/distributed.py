"""Data-parallel training on ``torch.distributed``: one policy, N ranks started by torchrun.

Each rank steps its own share of the envs (inline or in its own actor processes) and keeps
a replica of the algorithm; after every backward pass the gradients are averaged across
ranks (``average_gradients``, called by the algorithms' optimizer-step helpers before
clipping), so every replica takes the same step and the weights stay identical. Rank 0
alone writes TensorBoard, the console, config.yaml and checkpoints; step counts and
episode statistics are reduced over all ranks first.

What counts all ranks together: ``actors.num_envs`` (split evenly over the ranks; env i
keeps seed ``seed + i`` whichever rank steps it), ``total_steps``, and ``lr_per_env`` (the
learning rate follows the total envs, since the averaged gradient is that of the whole
batch). NCCL on GPUs, gloo on CPUs; every collective has ``TIMEOUT_S``, so a rank that
died ends the others with an error instead of a hang.

Outside torchrun (no ``WORLD_SIZE`` in the environment) every function here is a no-op on
a world of one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta

import torch
import torch.distributed as dist

from .config import Config, ConfigError

TIMEOUT_S = 120.0  # longer than any start-up step between two collectives (actor processes, EnvPool)


class RankFailure(RuntimeError):
    """A collective failed: another rank died, stopped or did not answer within TIMEOUT_S."""


@contextmanager
def collective(what: str) -> Iterator[None]:
    """Turn a failed collective (gloo and NCCL raise RuntimeError) into a RankFailure that says what happened."""
    try:
        yield
    except RuntimeError as exc:
        if isinstance(exc, RankFailure):
            raise
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RankFailure(f"rank {_world.rank} of {_world.size}: {what} with the other ranks failed ({detail[:300]}); another "
                          f"rank died or stopped, or did not answer within {TIMEOUT_S:.0f} s. The run was stopped; rank 0's "
                          "last checkpoint is intact.") from None


class RefusedWithAnotherRank(ConfigError):
    """Another rank refused to start the run and said why; this rank stops with it, silently (exit 2)."""


def refuse_together(refusal: ConfigError | None, what: str) -> None:
    """Raise ``refusal`` where a rank has one, and RefusedWithAnotherRank on every other rank,
    so that a refusal only one rank can see (rank 0's run directory) ends every rank with
    exit 2 instead of leaving the others to fail in their next collective."""
    if any_rank(refusal is not None, what):
        raise refusal if refusal is not None else RefusedWithAnotherRank(f"another rank refused {what}")


class ReplicaDivergence(RuntimeError):
    """The ranks' weights differ: data-parallel training has gone wrong; the message names the ranks."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes logs and checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


_world = World()


def world() -> World:
    return _world


def world_from_env() -> World:
    """The world torchrun describes in the environment (a world of one outside it)."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def check_supported(cfg: Config, ranks: int) -> None:
    """The configuration errors of a run on ``ranks`` ranks, before any rank starts."""
    if ranks < 1:
        raise ConfigError(f"--nproc-per-node {ranks} is invalid: give 1 or more ranks.")
    if ranks == 1:
        return
    if cfg.replay.save_with_checkpoint:
        raise ConfigError(f"replay.save_with_checkpoint = true cannot run on {ranks} ranks: each rank keeps its own replay "
                          "and rank 0 alone writes checkpoints. Set replay.save_with_checkpoint=false (a resume then "
                          "refills every rank's replay for algo.warmup_steps), or use --nproc-per-node 1.")
    if cfg.actors.num_envs % ranks:
        raise ConfigError(f"actors.num_envs = {cfg.actors.num_envs} does not split evenly over {ranks} ranks: "
                          f"use a multiple of {ranks} (--actors counts the envs of all ranks together).")
    share = rank_config(cfg, World(0, ranks))
    try:  # what each rank runs: a rank's share of the envs must fit its actor processes, minibatches, ...
        share.validate()
    except ConfigError as exc:
        raise ConfigError(f"On {ranks} ranks each rank runs {share.actors.num_envs} of the actors.num_envs = "
                          f"{cfg.actors.num_envs} envs (--actors counts all ranks together), and there: {exc}") from None


def init(cfg: Config, device: torch.device) -> World:
    """Join the process group torchrun set up (gloo for CPU tensors, NCCL for CUDA ones; gloo
    for CUDA ones too where this machine has more ranks than GPUs, decided from
    LOCAL_WORLD_SIZE and the GPUs visible, so every machine of a job needs as many GPUs)."""
    global _world
    found = world_from_env()
    if found.active and not dist.is_initialized():
        check_supported(cfg, found.size)
        # the control collectives (stop, skip, episodes, checksums) use CPU tensors: gloo carries
        # those, NCCL the gradients of a CUDA learner
        backend = "cpu:gloo"
        if device.type == "cuda":
            torch.cuda.set_device(_gpu_of(found))  # NCCL and all_gather_object use the current device
            # NCCL refuses two ranks on one GPU: ranks sharing GPUs average through gloo
            shared = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) > torch.cuda.device_count()
            backend = "cpu:gloo,cuda:gloo" if shared else "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_S))
    _world = found
    return found


def barrier() -> None:
    if _world.active:
        with collective("waiting for every rank to finish"):
            dist.barrier()


def shutdown() -> None:
    global _world
    if dist.is_initialized():
        dist.destroy_process_group()
    _world = World()


def cores_per_rank(local_ranks: int | None = None) -> int:
    """This machine's cores shared by the ranks torchrun started on it (or will start:
    ``local_ranks``)."""
    return max(1, (os.cpu_count() or 1) // (local_ranks or int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


def _gpu_of(world: World) -> int:
    """``LOCAL_RANK``, wrapped round the GPUs when there are more ranks than GPUs on this machine."""
    return world.local_rank % max(1, torch.cuda.device_count())


def rank_device(device: torch.device) -> torch.device:
    """Each rank's own GPU (``cuda:LOCAL_RANK``, shared round-robin when the ranks outnumber
    the GPUs); the CPU is shared."""
    return torch.device("cuda", _gpu_of(_world)) if device.type == "cuda" and _world.active else device


def rank_config(cfg: Config, world: World | None = None) -> Config:
    """What this rank (or ``world``'s) runs: its share of the envs, seeded so that env i keeps
    seed + i, at the learning rate of all ranks' envs together."""
    world = world or _world
    if not world.active:
        return cfg
    share = cfg.actors.num_envs // world.size
    lr = cfg.optim.lr * (cfg.actors.num_envs if cfg.optim.lr_per_env else 1)
    return replace(cfg, seed=cfg.seed + world.rank * share, actors=replace(cfg.actors, num_envs=share),
                   optim=replace(cfg.optim, lr=lr, lr_per_env=False))


def run_seed(cfg: Config) -> int:
    """The run's own seed, the same on every rank, from a rank's config (:func:`rank_config`
    gives each rank the seed of its first env): for random draws that must agree across ranks."""
    return cfg.seed - _world.rank * cfg.actors.num_envs if _world.active else cfg.seed


def rank_share(total: int) -> int:
    """This rank's part of a count the config gives for all ranks together (rounded up), such
    as the warm-up transitions a replay-based rank collects before it learns."""
    return -(-total // _world.size) if _world.active else total


def average_gradients(params) -> None:
    """Replace each parameter's gradient by its mean over the ranks (one all-reduce).

    The means are copied into the gradients' own tensors, which keep the parameter's memory
    layout: a conv weight stored channels-last (``perf.channels_last``) must get a gradient
    with its strides, because torch's fused CPU Adam walks parameter, gradient and moments by
    one flat index without checking that their layouts agree (a view of the flat buffer, in
    the default layout, gave each weight another element's gradient)."""
    if not _world.active:
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    with collective("averaging gradients"):
        dist.all_reduce(flat)
    flat /= _world.size
    offset = 0
    for param, grad in zip(params, grads, strict=True):
        n = grad.numel()
        grad.copy_(flat[offset : offset + n].view(grad.shape))
        param.grad = grad
        offset += n


def all_ranks(flag: torch.Tensor) -> torch.Tensor:
    """True where every rank's ``flag`` is true (a 0-d bool tensor), so ranks decide alike."""
    if not _world.active:
        return flag
    value = flag.to(torch.int32).reshape(1)
    with collective("agreeing on a step"):
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value[0].bool()


def _reduced(value: float, dtype: torch.dtype, op, what: str) -> float:
    packed = torch.tensor([value], dtype=dtype)
    with collective(what):
        dist.all_reduce(packed, op=op)
    return packed.item()


def fewest(count: int) -> int:
    """The smallest of the ranks' ``count``: the gradient steps every replica takes in an
    update (each replay-based rank counts what its own new transitions earned)."""
    return int(_reduced(count, torch.int64, dist.ReduceOp.MIN, "agreeing on the gradient steps")) if _world.active else count


def any_rank(flag: bool, what: str) -> bool:
    """Whether ``flag`` is true on any rank, so every rank takes the same path."""
    return bool(_reduced(int(flag), torch.int64, dist.ReduceOp.MAX, what)) if _world.active else flag


def largest(value: float) -> float:
    """The largest of the ranks' ``value``."""
    return float(_reduced(value, torch.float64, dist.ReduceOp.MAX, "pooling statistics")) if _world.active else value


def pooled_moments(count: int, mean: torch.Tensor, var: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Count, mean and population variance of all ranks' batches together, from each
    rank's own (a rank with an empty batch takes part with count 0). Chan et al.'s merge in
    rank order, so every rank computes the same bits."""
    if not _world.active:
        return count, mean, var
    size = mean.numel()
    local = torch.cat([torch.tensor([float(count)], dtype=torch.float64),
                       mean.detach().double().flatten().cpu(), var.detach().double().flatten().cpu()])
    gathered = [torch.zeros_like(local) for _ in range(_world.size)]
    with collective("pooling statistics"):
        dist.all_gather(gathered, local)
    total, pooled_mean, pooled_var = 0.0, torch.zeros(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)
    for part in gathered:
        n = float(part[0])
        if n == 0:
            continue
        merged = total + n
        delta = part[1 : 1 + size] - pooled_mean
        pooled_var = (pooled_var * total + part[1 + size :] * n + delta.square() * total * n / merged) / merged
        pooled_mean = pooled_mean + delta * n / merged
        total = merged
    return int(total), pooled_mean.view_as(mean).to(mean), pooled_var.view_as(var).to(var)


def exchange(returns: list[float], lengths: list[int], stopping: bool) -> tuple[list[float], list[int], bool]:
    """Every rank's finished episodes (in rank order) and whether any rank is stopping, on
    every rank, in one collective per update."""
    if not _world.active:
        return returns, lengths, stopping
    gathered: list = [None] * _world.size
    with collective("exchanging episodes"):
        dist.all_gather_object(gathered, (returns, lengths, stopping))
    return ([r for rank_returns, _, _ in gathered for r in rank_returns], [n for _, rank_lengths, _ in gathered for n in rank_lengths],
            any(stop for _, _, stop in gathered))


def agreed_signal(signum: int | None) -> int | None:
    """The stop signal any rank heard (the lowest rank's, if several did), on every rank: the
    ranks agreed at an exchange to stop after the same update, and each must then end as that
    signal asks (a final checkpoint, even of the initial state; its exit code), whichever rank
    heard it."""
    if not _world.active:
        return signum
    gathered: list = [None] * _world.size
    with collective("agreeing why the ranks stopped"):
        dist.all_gather_object(gathered, signum)
    return next((heard for heard in gathered if heard is not None), None)


def _named_tensors(state, name: str = "") -> list[tuple[str, torch.Tensor]]:
    """The replicated tensors of a nested state (dicts in key order, lists), each with its path."""
    if isinstance(state, torch.Tensor):
        return [(name, state)]
    if isinstance(state, dict):
        return [item for key in sorted(state, key=str)
                for item in _named_tensors(state[key], f"{name}.{key}" if name else str(key))]
    if isinstance(state, (list, tuple)):
        return [item for i, value in enumerate(state) for item in _named_tensors(value, f"{name}[{i}]")]
    return []


def _tensors(state) -> list[torch.Tensor]:
    return [tensor for _, tensor in _named_tensors(state)]


def broadcast_state(state: dict) -> None:
    """Rank 0's values into every tensor of ``state`` in place: given an algorithm's
    ``state_dict()``, whose tensors are its own parameters and buffers, every replica starts
    from rank 0's weights (initialisation may differ between CPUs)."""
    if not _world.active:
        return
    with torch.no_grad(), collective("receiving rank 0's weights"):
        for tensor in _tensors(state):
            dist.broadcast(tensor, src=0)


def check_replicas(state: dict) -> None:
    """Raise ReplicaDivergence naming the ranks whose weights differ from rank 0's."""
    if not _world.active:
        return
    named = [(name, t) for name, t in _named_tensors(state) if t.is_floating_point()]
    checksum = torch.tensor([float(t.double().sum()) for _, t in named], dtype=torch.float64)
    gathered = [torch.zeros_like(checksum) for _ in range(_world.size)]
    with collective("comparing weights"):
        dist.all_gather(gathered, checksum)
    differing = [rank for rank, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
    if differing:
        first = next(i for i in range(len(named)) if any(gathered[r][i] != gathered[0][i] for r in differing))
        raise ReplicaDivergence(f"the weights of rank(s) {differing} differ from rank 0's after data-parallel updates "
                                f"(first in {named[first][0]!r}); an algorithm must average its gradients with "
                                "distributed.average_gradients before stepping, and pool any statistics it keeps.")
