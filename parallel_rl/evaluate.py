"""Play episodes with a trained policy from a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .algos import make_algorithm
from .config import from_dict
from .envs import make_env
from .runtime.runner import resolve_device

MAX_EVAL_ENVS = 32


def evaluate(path: Path, episodes: int, greedy: bool = False, device: str = "cpu", seed: int = 12345) -> list[float]:
    """Returns of ``episodes`` complete episodes, the first ones of each of up to 32 envs.

    Each env contributes the same number of episodes, so short episodes are not
    over-represented the way "the first N to finish" would make them.
    """
    state = ckpt.load(path)
    cfg = from_dict(state["config"])
    torch_device = resolve_device(device)
    num_envs = min(episodes, MAX_EVAL_ENVS)
    per_env = math.ceil(episodes / num_envs)
    env = make_env(cfg.env, num_envs, seed)
    try:
        algo = make_algorithm(env.spec, cfg, torch_device)
        ckpt.restore(algo, state, path)
        counts = np.zeros(num_envs, np.int64)
        returns: list[list[float]] = [[] for _ in range(num_envs)]
        obs = env.reset()
        tracker = env.tracker
        while counts.min() < per_env:
            actions = algo.act(torch.from_numpy(obs).to(torch_device), greedy=greedy)[0].cpu().numpy()
            result = env.step(actions)
            obs = result.obs
            done = (result.terminated | result.truncated) & ~result.autoreset
            for i in np.flatnonzero(done):
                if counts[i] < per_env:
                    returns[i].append(float(tracker.returns[i]))  # counters reset on the next step
                    counts[i] += 1
            tracker.pop()
    finally:
        env.close()
    flat = [r for per in zip(*returns, strict=False) for r in per]
    return flat[:episodes]
