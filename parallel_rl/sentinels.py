"""The values written over freshly allocated buffers (rollout slots, replay storage).

Filling every array at allocation pre-faults its pages (a first touch inside the hot loop
cost 20% of throughput) and makes a read of never-written data visible: NaN for floats,
these for the rest.
"""

from __future__ import annotations

import torch

SENTINELS = {torch.uint8: 0xAB, torch.bool: True, torch.int64: -1, torch.int32: -1}


def sentinel(dtype: torch.dtype):
    return SENTINELS.get(dtype, float("nan"))
