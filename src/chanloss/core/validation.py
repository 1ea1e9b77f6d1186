"""Argument and input validation shared by the losses, the models and the data sets.

The bottom of the package: it needs only the standard library and torch, so that
``chanloss.losses`` keeps depending on torch alone. Every check raises ``ValueError`` with a
one-line message that names the argument, what was expected and what was received.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real

import torch
from torch import Tensor

_HALF_DTYPES = (torch.float16, torch.bfloat16)


# -- scalar options ------------------------------------------------------------------------------
def check_int(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` if it is an int in ``[low, high]``; raise ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in {_range_text(low, high, True, True)}, got {value}")
    return value


def check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``value`` as a finite float in the given range; raise ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    below = low is not None and (value < low if low_inclusive else value <= low)
    above = high is not None and (value > high if high_inclusive else value >= high)
    if not math.isfinite(value) or below or above:
        rng = _range_text(low, high, low_inclusive, high_inclusive)
        raise ValueError(f"{name} must be a finite number in {rng}, got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a bool; raise ``ValueError`` otherwise (1 and "yes" are not)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_choice(name: str, value: object, choices: tuple) -> object:
    """Return ``value`` if it is one of ``choices``; raise ``ValueError`` otherwise.

    A bool is never a choice, even where ``True == 1`` would make it compare equal.
    """
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


def _range_text(low: float | None, high: float | None, low_inc: bool, high_inc: bool) -> str:
    left = "(-inf" if low is None else ("[" if low_inc else "(") + f"{low:g}"
    right = "inf)" if high is None else f"{high:g}" + ("]" if high_inc else ")")
    return f"{left}, {right}"


# -- factory options -----------------------------------------------------------------------------
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


# -- tensors -------------------------------------------------------------------------------------
def check_tensor(
    name: str, x: object, *, ndim: int, layout: str, sizes: dict[int, int] | None = None
) -> Tensor:
    """Check that ``x`` is a floating tensor of rank ``ndim`` with a non-empty batch.

    ``layout`` describes the dimensions for messages, e.g. ``"(B, C, H, W)"``; ``sizes`` maps
    a dimension index to its required size.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions {layout}, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: expected B >= 1, got shape {tuple(x.shape)}")
    for dim, size in (sizes or {}).items():
        if x.shape[dim] != size:
            raise ValueError(
                f"{name} must have size {size} in dimension {dim} of {layout}, "
                f"got shape {tuple(x.shape)}"
            )
    return x


def check_labels(
    labels: object, *, batch_size: int, num_classes: int | None, validate_values: bool
) -> Tensor:
    """Check that ``labels`` is an integer tensor of shape ``(B,)`` with values in ``[0, K)``.

    The value range needs the labels' values on the host; it is checked for CPU tensors always
    and for tensors on other devices only when ``validate_values`` is set, so that a training
    step on an accelerator does not wait for a device-to-host copy.
    """
    if not isinstance(labels, Tensor):
        raise ValueError(
            f"labels must be a torch.Tensor of shape (B,), got {type(labels).__name__}"
        )
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"labels must be an integer tensor (e.g. torch.int64), got dtype {labels.dtype}"
        )
    if labels.dim() != 1 or labels.shape[0] != batch_size:
        raise ValueError(
            f"labels must have shape ({batch_size},) to match the batch, got {tuple(labels.shape)}"
        )
    if num_classes is not None and (validate_values or labels.device.type == "cpu"):
        low, high = (int(v) for v in torch.aminmax(labels.long()))
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise ValueError(f"labels must be in [0, {num_classes}), got a label {bad}")
    return labels.long()


def check_finite(name: str, x: Tensor) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values (forces a host sync)."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} must be finite: found {bad} NaN/inf values of {x.numel()}")


def as_compute_dtype(x: Tensor) -> Tensor:
    """float16/bfloat16 are computed in float32; float32 and float64 are kept as they are."""
    return x.float() if x.dtype in _HALF_DTYPES else x


def did_you_mean(key: str, options: Sequence[str]) -> str:
    """A hint ``" (did you mean 'lr'?)"`` naming the option ``key`` was probably meant as (or
    ``""``): a close spelling (difflib), or by initials the abbreviation of a long name or
    the long name of an abbreviation (``learning_rate`` -> ``lr``, ``wd`` ->
    ``weight_decay``), case aside."""
    import difflib

    close = difflib.get_close_matches(key, list(options), n=1)
    if not close:
        lowered = key.lower()
        close = [
            o
            for o in options
            if lowered in (o.lower(), _initials(o)) or _initials(key) == o.lower()
        ]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _initials(name: str) -> str:
    """``learning_rate`` -> ``lr``; a one-word name has none (``""``)."""
    words = [w for w in name.lower().replace("-", "_").split("_") if w]
    return "".join(w[0] for w in words) if len(words) > 1 else ""
