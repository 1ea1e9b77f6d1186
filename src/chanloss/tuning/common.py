"""Small helpers and plain values of ``chanloss tune``: the :class:`Recipe` (the config a tune
varies), the :class:`SearchFacts` (what the search left in the study), a log that masks
passwords, durations, parameter text, cores."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chanloss.config.search import Dimension, apply_params
from chanloss.core.masking import mask_secrets

__all__ = [
    "MaskedLog",
    "Recipe",
    "SearchFacts",
    "fmt",
    "params_text",
    "parse_duration",
    "print_line",
]


@dataclass(frozen=True)
class Recipe:
    """The training config that a tune varies, as plain values: ``raw`` (the config as a dict,
    without its ``search:`` block, every seed validating on one split), the searched
    dimensions ``dims``, the values the ``search:`` block fixes (``fixed``, by config path)
    and the config's ``seed``."""

    raw: dict[str, Any]
    dims: list[Dimension]
    fixed: dict[tuple[str | int, ...], Any]
    seed: int

    def trial(self, params: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        """The training config of a setting (``params``) on ``seed`` (default the config's)."""
        raw = apply_params(self.raw, self.dims, self.fixed, params)
        raw["seed"] = self.seed if seed is None else seed
        return raw

    def ce(self) -> dict[str, Any]:
        """The config with cross-entropy alone (the optimiser as written)."""
        raw = copy.deepcopy(self.raw)
        raw["losses"] = [{"name": "ce"}]
        return raw


@dataclass(frozen=True)
class SearchFacts:
    """What the search left in the study, read once after it: the trial ``counts``, the
    ``stuck`` search trials, the pruned-``early`` and ``finished`` trials, the ``settings``
    (best first), the seed ``noise`` (``noise_std`` with ``dof`` degrees of freedom, stuck
    runs left out), ``num_classes``, the seed noise ``by_epoch`` and the complete trials'
    ``durations``."""

    counts: dict[str, int]
    stuck: list[dict[str, Any]]
    early: int
    finished: int
    settings: list[dict[str, Any]]
    noise_std: float
    dof: int
    num_classes: int
    by_epoch: dict[int, float]
    durations: list[float]

    @property
    def noise(self) -> float | None:
        """The measured seed noise, or ``None`` without one."""
        return self.noise_std if self.dof else None


def print_line(line: str) -> None:
    """The default log of ``chanloss tune``: the line on stdout, at once."""
    print(line, flush=True)


class MaskedLog:
    """A log (a function taking one line) that writes every line without a password: a
    trial's error may quote the storage URL."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def __call__(self, line: str) -> None:
        self.log(mask_secrets(line))


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


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={fmt(v)}" for k, v in params.items())
