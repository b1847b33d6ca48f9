"""parallel-rl: single-machine, massively parallel actor-learner deep RL on EnvPool and PyTorch."""

__version__ = "0.1.0"
