#!/usr/bin/env bash
# PAAC on Pong with the paper's budget (80M agent steps = 320M frames), several seeds one
# after another. Extra arguments go to every `parallel-rl launch`, e.g. --actors 256.
set -euo pipefail
for seed in ${SEEDS:-1 2 3}; do
  parallel-rl launch --config paac_atari --env Pong-v5 --steps 80000000 --seed "$seed" "$@"
done
