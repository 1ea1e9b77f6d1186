"""The statistics of ``chanloss tune``'s verdicts."""

from __future__ import annotations

import math
from typing import Any

from chanloss.tuning.common import mean_std

__all__ = ["gain_over"]


def gain_over(tuned: list[float], base: list[float]) -> dict[str, Any]:
    """Mean difference ``tuned - base``, its standard error (Welch) and whether it lies beyond
    two standard errors; ``beyond`` is None when either side has fewer than two values."""
    (ma, sa), (mb, sb) = mean_std(tuned), mean_std(base)
    diff = ma - mb
    if len(tuned) < 2 or len(base) < 2:
        return {"diff": diff, "se": math.nan, "beyond": None}
    se = math.sqrt(sa**2 / len(tuned) + sb**2 / len(base))
    return {"diff": diff, "se": se, "beyond": bool(abs(diff) > 2 * se)}
