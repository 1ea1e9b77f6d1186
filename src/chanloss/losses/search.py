"""Search-space declarations: what ``chanloss tune`` may vary for each loss, and in what range.

A loss class declares its tunable parameters in one place, the class attribute
``search_space``: a mapping from a key of its ``losses`` config entry (a constructor parameter,
or ``weight``, the entry's multiplier) to one of the small dataclasses below. Weights are
log-uniform with a lower end small enough that the search can switch the loss almost off, so
a tuned loss added to cross-entropy cannot end worse than cross-entropy except by noise.

Plain data, no dependency: ``chanloss.config.search`` turns these into Optuna suggestions
and lets a config's ``search:`` block narrow or override them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Choice", "IntRange", "LogUniform", "SearchParam", "Uniform", "describe"]


@dataclass(frozen=True)
class LogUniform:
    """A float drawn uniformly in log space from ``[low, high]`` (``0 < low <= high``)."""

    low: float
    high: float


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from ``[low, high]``."""

    low: float
    high: float


@dataclass(frozen=True)
class IntRange:
    """An integer drawn uniformly from ``low..high`` (both included)."""

    low: int
    high: int


@dataclass(frozen=True)
class Choice:
    """One of a few values (numbers, strings or booleans), drawn as a categorical."""

    values: tuple[Any, ...]


SearchParam = LogUniform | Uniform | IntRange | Choice


def describe(param: SearchParam) -> str:
    """``log-uniform [0.001, 10]``, ``uniform [0, 0.3]``, ``int 1..4``, ``one of mean, sum``."""
    if isinstance(param, LogUniform):
        return f"log-uniform [{param.low:g}, {param.high:g}]"
    if isinstance(param, Uniform):
        return f"uniform [{param.low:g}, {param.high:g}]"
    if isinstance(param, IntRange):
        return f"int {param.low}..{param.high}"
    return "one of " + ", ".join(
        f"{v:.4g}" if isinstance(v, float) else str(v) for v in param.values
    )
