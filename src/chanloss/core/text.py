"""The one place for the small formatting and statistics helpers every floor prints with."""

from __future__ import annotations

import math
import os
import statistics

__all__ = ["clock", "mean_std", "pct", "pid_alive"]


def clock(seconds: float) -> str:
    """A duration as ``7s``, ``3m05s`` or ``1h02m``."""
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; NaN for what a list this short cannot give."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def pct(mean: float | None, std: float = math.nan, *, unit: str = " %", missing: str = "-") -> str:
    """A fraction as a percentage with its spread: ``81.25 ± 1.50 %``; ``missing`` for None or
    NaN, the mean alone when the spread is NaN."""
    if mean is None or math.isnan(mean):
        return missing
    if math.isnan(std):
        return f"{100 * mean:.2f}{unit}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}{unit}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True
