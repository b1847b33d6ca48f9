"""Aggregate statistics over runs and games, as pure functions (Agarwal et al. 2021):
human-normalised scores, the interquartile mean (IQM), and stratified bootstrap
confidence intervals.

Human-normalised score: ``(score - random) / (human - random)``, 0 for a uniformly random
policy and 1 for the professional human tester, with the per-game reference scores of the
Atari-57 benchmark (Mnih et al. 2015, completed by Badia et al. 2020). Classic-control tasks
have no human score: theirs is ``(score - random) / (solved - random)``, 1 at Gymnasium's
``reward_threshold`` ("solved").

IQM: the mean of the middle 50% of all (run, game) scores pooled, ``floor(n / 4)`` cut
from each end; robust to outlier runs and games, more efficient than the median.

Stratified bootstrap: each replicate resamples the runs of every game independently,
with replacement, keeping the number of runs per game; the percentile interval of the
statistic over the replicates is the confidence interval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

# game: (random score, human score)
ATARI_REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7), "Amidar": (5.8, 1719.5), "Assault": (222.4, 742.0), "Asterix": (210.0, 8503.3),
    "Asteroids": (719.1, 47388.7), "Atlantis": (12850.0, 29028.1), "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5), "BeamRider": (363.9, 16926.5), "Berzerk": (123.7, 2630.4),
    "Bowling": (23.1, 160.7), "Boxing": (0.1, 12.1), "Breakout": (1.7, 30.5), "Centipede": (2090.9, 12017.0),
    "ChopperCommand": (811.0, 7387.8), "CrazyClimber": (10780.5, 35829.4), "Defender": (2874.5, 18688.9),
    "DemonAttack": (152.1, 1971.0), "DoubleDunk": (-18.6, -16.4), "Enduro": (0.0, 860.5),
    "FishingDerby": (-91.7, -38.7), "Freeway": (0.0, 29.6), "Frostbite": (65.2, 4334.7), "Gopher": (257.6, 2412.5),
    "Gravitar": (173.0, 3351.4), "Hero": (1027.0, 30826.4), "IceHockey": (-11.2, 0.9), "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0), "Krull": (1598.0, 2665.5), "KungFuMaster": (258.5, 22736.3),
    "MontezumaRevenge": (0.0, 4753.3), "MsPacman": (307.3, 6951.6), "NameThisGame": (2292.3, 8049.0),
    "Phoenix": (761.4, 7242.6), "Pitfall": (-229.4, 6463.7), "Pong": (-20.7, 14.6), "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0), "Riverraid": (1338.5, 17118.0), "RoadRunner": (11.5, 7845.0), "Robotank": (2.2, 11.9),
    "Seaquest": (68.4, 42054.7), "Skiing": (-17098.1, -4336.9), "Solaris": (1236.3, 12326.7),
    "SpaceInvaders": (148.0, 1668.7), "StarGunner": (664.0, 10250.0), "Surround": (-10.0, 6.5),
    "Tennis": (-23.8, -8.3), "TimePilot": (3568.0, 5229.2), "Tutankham": (11.4, 167.6), "UpNDown": (533.4, 11693.2),
    "Venture": (0.0, 1187.5), "VideoPinball": (16256.9, 17667.9), "WizardOfWor": (563.5, 4756.5),
    "YarsRevenge": (3092.9, 54576.9), "Zaxxon": (32.5, 9173.3),
}

# env id: (random score, Gymnasium's reward_threshold). The random scores are the mean of
# 1,000 episodes of uniformly random actions (Gymnasium 1.x, episode seeds 0-999).
CLASSIC_REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "CartPole-v1": (22.2, 475.0), "Acrobot-v1": (-499.1, -100.0),
}


def atari_game(env_id: str) -> str:
    """The game of an environment id: ``Pong-v5`` -> ``Pong``; raises ``KeyError`` naming the known games."""
    game = env_id.split("/")[-1].split("-")[0]
    if game not in ATARI_REFERENCE_SCORES:
        raise KeyError(f"{env_id!r} is not one of the Atari-57 games with reference scores: {', '.join(ATARI_REFERENCE_SCORES)}")
    return game


def human_normalized(score, env_id: str):
    """``(score - random) / (human - random)`` for the game of ``env_id``; scalars or arrays."""
    random_score, human_score = ATARI_REFERENCE_SCORES[atari_game(env_id)]
    return (np.asarray(score, dtype=np.float64) - random_score) / (human_score - random_score)


def normalized_score(score, env_id: str) -> tuple[str, float]:
    """(task, normalised score): human-normalised for an Atari-57 game (task ``Pong``),
    solved-normalised for a classic-control task (task ``CartPole-v1``); raises
    ``KeyError`` naming the tasks that have reference scores."""
    if env_id in CLASSIC_REFERENCE_SCORES:
        random_score, solved_score = CLASSIC_REFERENCE_SCORES[env_id]
        return env_id, (float(score) - random_score) / (solved_score - random_score)
    try:
        return atari_game(env_id), float(human_normalized(score, env_id))
    except KeyError:
        raise KeyError(f"{env_id!r} has no reference scores: the Atari-57 games (Pong-v5, ...) and "
                       f"{', '.join(CLASSIC_REFERENCE_SCORES)} have them") from None


def iqm(scores) -> float:
    """Interquartile mean of all values: drop floor(n/4) from each end of the sorted values, average the rest."""
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if values.size == 0:
        raise ValueError("the IQM of no scores is undefined")
    cut = values.size // 4
    return float(values[cut: values.size - cut].mean())


def stratified_bootstrap_ci(
    scores_per_task: Mapping[str, Sequence[float]],
    statistic: Callable[[np.ndarray], float] = iqm,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point estimate, lower, upper) of ``statistic`` over the pooled scores of all tasks.

    Every replicate resamples, for each task on its own, as many runs as it has with
    replacement; the interval is the central ``confidence`` percentile range of the
    replicates. Tasks may have different numbers of runs.
    """
    tasks = [np.asarray(v, dtype=np.float64).ravel() for v in scores_per_task.values()]
    if not tasks or any(t.size == 0 for t in tasks):
        raise ValueError("every task needs at least one score")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence = {confidence} must lie in (0, 1)")
    rng = np.random.default_rng(seed)
    point = statistic(np.concatenate(tasks))
    replicates = np.empty(reps)
    for r in range(reps):
        replicates[r] = statistic(np.concatenate([t[rng.integers(0, t.size, t.size)] for t in tasks]))
    tail = 100.0 * (1.0 - confidence) / 2.0
    lower, upper = np.percentile(replicates, [tail, 100.0 - tail])
    return point, float(lower), float(upper)


__all__ = ["ATARI_REFERENCE_SCORES", "CLASSIC_REFERENCE_SCORES", "atari_game", "human_normalized", "iqm",
           "normalized_score", "stratified_bootstrap_ci"]
