"""IMPALA (Espeholt et al. 2018): PAAC's network and loss with V-trace targets.

With asynchronous actors the acting policy lags the learner's; V-trace corrects for that
with clipped importance weights (rho_bar, c_bar). On on-policy data it reduces to PAAC's
n-step returns exactly.
"""

from __future__ import annotations

import torch

from .base import Batch
from .paac import PAAC
from .returns import vtrace


class IMPALA(PAAC):
    name = "impala"
    max_policy_lag = None  # V-trace corrects for the lag

    def targets(self, batch: Batch, rewards, values, bootstrap, target_log_probs) -> tuple[torch.Tensor, torch.Tensor]:
        algo = self.cfg.algo
        return vtrace(
            batch.behaviour_log_probs, target_log_probs, rewards, values, bootstrap,
            batch.terminated, batch.truncated, algo.gamma, algo.rho_bar, algo.c_bar,
        )
