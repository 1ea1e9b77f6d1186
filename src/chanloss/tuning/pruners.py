"""The pruners of ``chanloss tune``."""

from __future__ import annotations

from typing import Any

from chanloss.training.config import ConfigError

__all__ = ["PRUNERS", "make_pruner"]

PRUNERS = ("median", "halving", "none")


def make_pruner(kind: str, epochs: int) -> Any:
    """The pruner: ``median`` (a trial whose validation accuracy is below the median of the
    earlier trials at the same epoch stops, after a warm-up of a quarter of the epochs),
    ``halving`` (asynchronous successive halving) or ``none``."""
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=epochs // 4)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner: expected one of {', '.join(PRUNERS)}, got {kind!r}")
