"""parallel-rl: single-machine, massively parallel actor-learner deep RL on EnvPool and PyTorch."""

import os

__version__ = "0.1.0"

# After each parallel region torch's OpenMP threads (libgomp) spin for about 300,000 turns
# before they sleep, on the same cores the env library's threads step on. A shorter spin gives
# the envs those cores back between two inferences and still catches back-to-back ops:
# measured side by side on 2 cores, PAAC on Pong trains 1.10x faster, QR-DQN at minibatch 8
# 1.12x, PPO and PQN level (docs/benchmarks.md, OpenMP spin). libgomp reads it once, when torch loads: so here,
# before any import of torch, for this process and every process it starts. Left alone where
# the user chose a spin or a wait policy (GOMP_SPINCOUNT takes precedence over OMP_WAIT_POLICY).
OPENMP_SPIN_COUNT = "10000"
if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT
