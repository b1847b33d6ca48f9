"""IMPALA (Espeholt et al. 2018): PAAC's network and loss with V-trace targets.

With asynchronous actors the acting policy lags the learner's; V-trace corrects for that
with clipped importance weights (rho_bar, c_bar). On on-policy data it reduces to PAAC's
n-step returns exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import Config, ConfigError, setting
from ..contracts import Batch
from ..registry import register
from .paac import PAAC, PAACConfig
from .returns import vtrace


@dataclass
class IMPALAConfig(PAACConfig):
    rho_bar: float = setting("Clip of the importance weights in the V-trace targets and policy gradient.", 1.0)
    c_bar: float = setting("Clip of the trace-cutting coefficients in V-trace.", 1.0)

    def validate(self, cfg: Config) -> None:
        super().validate(cfg)
        for name, value in (("algo.rho_bar", self.rho_bar), ("algo.c_bar", self.c_bar)):
            if value <= 0:
                raise ConfigError(f"{name} = {value} is invalid: an importance-weight clip must be positive (IMPALA: 1).")


@register
class IMPALA(PAAC):
    name = "impala"
    config_class = IMPALAConfig
    max_policy_lag = None  # V-trace corrects for the lag

    def targets(self, batch: Batch, rewards, values, bootstrap, target_log_probs) -> tuple[torch.Tensor, torch.Tensor]:
        algo = self.cfg.algo
        return vtrace(
            batch.behaviour_log_probs, target_log_probs, rewards, values, bootstrap,
            batch.terminated, batch.truncated, algo.gamma, algo.rho_bar, algo.c_bar,
        )
