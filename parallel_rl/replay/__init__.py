"""Replay storage for off-policy algorithms: vector transitions (uniform.py) and Atari
frames stored once with stacks rebuilt at sampling time (frames.py)."""

from .uniform import Transitions, UniformReplay

__all__ = ["Transitions", "UniformReplay"]
