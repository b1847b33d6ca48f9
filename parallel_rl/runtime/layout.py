"""The layout of a run on this machine: how many actor processes, how many torch and EnvPool
threads, how many env groups per actor. Every choice ``-1``/``0`` leaves to the machine is
made here, from the cores of this rank and where acting runs (docs/benchmarks.md, layouts).
"""

from __future__ import annotations

import math

import torch

from .. import distributed
from ..algos.base import policy_lag_bound
from ..config import Config, ConfigError


def resolve_procs(cfg: Config, local_ranks: int | None = None) -> int:
    """K from the config; -1 picks inline acting below 4 cores, else one actor process per 4 cores (at most 8).

    Below 4 cores an actor process has no core of its own to overlap with learning: measured
    on 2 cores, PAAC on Pong trains about 20% faster inline (docs/benchmarks.md, layouts).
    """
    if cfg.actors.procs >= 0:
        return cfg.actors.procs
    cores = distributed.cores_per_rank(local_ranks)
    if cores < 4:
        return 0
    return max(1, min(8, cores // 4, cfg.actors.num_envs))


def resolve_env_groups(cfg: Config, procs: int) -> int:
    """Env groups per actor from the config; 0 picks 1 for inline acting on a CPU
    learner, else 2.

    Two groups let one group step while the other's actions are inferred. Inline on a CPU
    the learner's torch threads already take every core, so the overlap only contends for
    them and doubles the per-step Python: measured on 2 cores, `paac_classic` trains 1.2 to
    1.7 times faster with one group, the Atari recipes the same within the noise
    (docs/benchmarks.md, layouts).
    """
    if cfg.actors.env_groups > 0:
        return cfg.actors.env_groups
    if procs:
        return 2
    return 1 if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()) else 2


def split_envs(num_envs: int, parts: int) -> list[int]:
    return [num_envs // parts + (k < num_envs % parts) for k in range(parts)]


def thread_layout(cfg: Config, procs: int) -> tuple[int, int]:
    """(torch threads in the learner, EnvPool threads per actor process) so the sum fits the cores."""
    cores = distributed.cores_per_rank()
    if procs == 0:  # stepping and learning take turns in one process: both may use every core
        return cfg.torch_threads or cores, cfg.actors.num_threads or max(1, min(cfg.actors.num_envs, cores))
    learner = cfg.torch_threads or max(1, cores // (procs + 1))
    per_actor = cfg.actors.num_threads or max(1, (cores - learner) // procs)
    return learner, per_actor


def rollout_pieces(cfg: Config) -> tuple[int, int]:
    """(steps per env of each piece, pieces) a rollout is learned in, publishing after each:
    one whole rollout for the on-policy algorithms, ``algo.publish_interval``'s share for the
    replay-based ones (``learner.learn``)."""
    segment_length = cfg.algo.segment_length(cfg.actors.num_envs)
    return segment_length, math.ceil(cfg.algo.rollout_length / segment_length)


def check_policy_lag_fits(cfg: Config, procs: int) -> None:
    """Refuse a policy-lag bound that actor processes cannot keep, before anything is created.

    Replay-based learning takes a rollout in several updates (``algo.publish_interval``) and
    publishes weights after each; but every piece was acted before the first of them, so the
    last piece is learned that many versions after the weights that acted it, whatever the wait.
    """
    bound = policy_lag_bound(cfg)
    segment_length, updates_per_rollout = rollout_pieces(cfg)
    least = updates_per_rollout - 1 + int(cfg.actors.deterministic_lag)  # that mode acts a version behind
    if procs == 0 or bound is None or bound >= least:
        return
    raise ConfigError(
        f"actors.max_policy_lag = {bound} cannot hold with actor processes for algo.name = {cfg.algo.name!r}: "
        f"each rollout (algo.rollout_length = {cfg.algo.rollout_length} steps per env) is learned in "
        f"{updates_per_rollout} updates of {segment_length} steps (algo.publish_interval), all acted before the "
        f"first, so its last piece is learned {least} version(s) after the weights that acted. Set "
        f"actors.max_policy_lag to {least} or more, or -1 (unbounded: acting takes each new version within a rollout), "
        f"or algo.rollout_length={segment_length} (one update per rollout), or actors.procs=0.")
