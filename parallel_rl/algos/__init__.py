"""Algorithms: one file each, registered here by the name used in ``algo.name``."""

from __future__ import annotations

import torch

from ..config import Config
from ..envs import EnvSpec
from .impala import IMPALA
from .paac import PAAC
from .ppo import PPO
from .pqn import PQN
from .qrdqn import QRDQN
from .sac import SAC

ALGORITHMS = {"paac": PAAC, "impala": IMPALA, "ppo": PPO, "pqn": PQN, "sac": SAC, "qrdqn": QRDQN}


def make_algorithm(spec: EnvSpec, cfg: Config, device: torch.device):
    return ALGORITHMS[cfg.algo.name](spec, cfg, device)


__all__ = ["ALGORITHMS", "make_algorithm"]
