"""Option validation for model and data-set factories.

Every check raises ``ValueError`` naming the option, what was expected and what was received.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from numbers import Integral, Real


def check_int(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[low, high]``; raise ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else str(low)
        hi = "inf" if high is None else str(high)
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value}")
    return value


def check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
) -> float:
    """Return ``value`` as a finite float in the range; raise ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    below = low is not None and (value < low if low_inclusive else value <= low)
    above = high is not None and value > high
    if not math.isfinite(value) or below or above:
        left = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        right = "inf)" if high is None else f"{high:g}]"
        raise ValueError(f"{name} must be a finite number in {left}, {right}, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool; raise ``ValueError`` otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: object, choices: tuple) -> object:
    """Return ``value`` if it is one of ``choices``; raise ``ValueError`` otherwise."""
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_size(name: str, value: object) -> tuple[int, int]:
    """Return ``value`` (an int or a pair of ints >= 1) as ``(height, width)``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a (height, width) pair, got {value!r}")
        return check_int(f"{name}[0]", value[0], low=1), check_int(f"{name}[1]", value[1], low=1)
    size = check_int(name, value, low=1)
    return size, size


def keyword_options(factory: Callable) -> tuple[str, ...]:
    """The keyword-only parameter names of ``factory`` (its options)."""
    params = inspect.signature(factory).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def check_options(
    kind: str, name: str, opts: Mapping[str, object], allowed: tuple[str, ...]
) -> None:
    """Raise ``ValueError`` naming the first option of ``opts`` that is not in ``allowed``."""
    for key in opts:
        if key not in allowed:
            raise ValueError(
                f"{kind} {name!r} has no option {key!r}; allowed options: {', '.join(allowed)}"
            )
