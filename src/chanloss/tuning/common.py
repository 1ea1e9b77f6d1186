"""Small helpers of ``chanloss tune``: durations, formatting, cores, atomic text files."""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any

__all__ = ["clock", "cores", "fmt", "mean_std", "params_text", "parse_duration", "write_text"]


def parse_duration(text: str) -> float:
    """Seconds in ``2h``, ``90m``, ``45s``, ``1h30m`` or a plain number of seconds."""
    import re

    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        seconds = float(s)
    else:
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", s)
        if not s or parts is None or not any(parts.groups()):
            raise ValueError(f"expected a duration like 2h, 90m, 1h30m or 3600, got {text!r}")
        h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
        seconds = 3600 * h + 60 * m + sec
    if seconds <= 0:
        raise ValueError(f"expected a positive duration, got {text!r}")
    return seconds


def clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={fmt(v)}" for k, v in params.items())


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def write_text(path: Path, text: str) -> None:
    from chanloss.run.run_dir import atomic_open

    with atomic_open(path) as f:
        f.write(text)
