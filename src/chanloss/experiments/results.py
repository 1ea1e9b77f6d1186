"""The runs of one config in a comparison (:class:`ConfigResult`): what ``compare`` returns
and what the verdict (:mod:`chanloss.experiments.verdict`) reads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from chanloss.config import TrainConfig

__all__ = ["ConfigResult"]


@dataclass
class ConfigResult:
    """The runs of one config: final test (and validation) accuracies over seeds, mean time.
    ``diverged``: the seeds whose run diverged (``compare(..., keep_diverged=True)``), left out
    of the accuracies and times."""

    label: str
    config: TrainConfig
    seeds: list[int]
    test_acc: list[float]
    train_time_s: list[float]
    params: int
    run_dirs: list[Path]
    val_acc: list[float] = field(default_factory=list)  # empty without a validation split
    diverged: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        """Mean final test accuracy over the seeds (NaN when every run diverged)."""
        return sum(self.test_acc) / len(self.test_acc) if self.test_acc else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (0 for a single seed)."""
        n = len(self.test_acc)
        if n < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((a - m) ** 2 for a in self.test_acc) / (n - 1))

    @property
    def val_mean(self) -> float | None:
        """Mean final validation accuracy over seeds; ``None`` without a validation split."""
        return sum(self.val_acc) / len(self.val_acc) if self.val_acc else None

    @property
    def val_std(self) -> float:
        n = len(self.val_acc)
        if n < 2:
            return 0.0
        m = sum(self.val_acc) / n
        return math.sqrt(sum((a - m) ** 2 for a in self.val_acc) / (n - 1))
