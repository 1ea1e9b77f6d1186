"""What a training run reports: :class:`RunResult`, returned by ``train`` and read back from a
run directory by :func:`read_result` (the one way a run's result is read: compare, tune)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chanloss.core.errors import ConfigError

__all__ = ["RunResult", "metrics_rows", "read_result"]


class RunResult(dict):
    """The result of one run in ``run_dir``: the contents of its ``summary.json`` (it is that
    mapping, so ``result["final_test_acc"]`` works as before) with typed accessors.

    ``final_test_acc`` is the final epoch's test accuracy (``None`` when the test split was
    not read, as in ``tune``); ``final_val_acc`` the final epoch's validation accuracy
    (``None`` without a validation split); ``best_val_acc``/``best_epoch`` the epoch that
    ``best.pt`` holds. A dict crosses a process boundary; this class is rebuilt on each side.
    """

    def __init__(self, summary: Mapping[str, Any], run_dir: str | Path) -> None:
        super().__init__(summary)
        self.run_dir = Path(run_dir)

    def __reduce__(self) -> tuple[Any, ...]:
        return (RunResult, (dict(self), str(self.run_dir)))

    @property
    def finished(self) -> bool:
        """Whether the run trained all of its ``epochs``."""
        return bool(self.get("finished"))

    @property
    def epochs(self) -> int:
        """Epochs completed."""
        return int(self.get("epochs", 0))

    @property
    def final_test_acc(self) -> float | None:
        """The final epoch's test accuracy (``None`` when the test split was not read)."""
        value = self.get("final_test_acc")
        return None if value is None else float(value)

    @property
    def final_val_acc(self) -> float | None:
        """The final epoch's validation accuracy (``summary.json``, else the last row of
        ``metrics.csv``); ``None`` without a validation split."""
        value = self.get("final_val_acc")
        if value is not None:
            return float(value)
        rows = metrics_rows(self.run_dir)
        last = rows[-1].get("val_acc") if rows else None
        return float(last) if last else None

    @property
    def best_val_acc(self) -> float | None:
        """The best validation accuracy (the epoch ``best.pt`` holds); ``None`` without one."""
        value = self.get("best_val_acc")
        return None if value is None else float(value)

    @property
    def best_epoch(self) -> int | None:
        """The epoch ``best.pt`` holds (the last one without a validation split)."""
        value = self.get("best_epoch")
        return None if value is None else int(value)

    @property
    def train_time_s(self) -> float:
        """Seconds spent in training epochs (evaluation and start-up not counted)."""
        return float(self.get("train_time_s", 0.0))

    @property
    def params(self) -> int:
        """Parameters of the model (the losses' own parameters are ``loss_params``)."""
        return int(self.get("params", 0))

    @property
    def last_checkpoint(self) -> Path:
        """``last.pt``: the latest checkpoint (``--resume`` reads it)."""
        return self.run_dir / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        """``best.pt``: the checkpoint of the best validation epoch (else the last one)."""
        return self.run_dir / "best.pt"

    def metrics(self) -> list[dict[str, str]]:
        """The rows of the run's ``metrics.csv`` (one per epoch; empty when unreadable)."""
        return metrics_rows(self.run_dir)


def read_result(run_dir: str | Path) -> RunResult:
    """The result of the run in ``run_dir``, from its ``summary.json``."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run_dir} holds no finished run (no summary.json)") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    if not isinstance(summary, dict):
        raise ConfigError(f"{path} is not a run summary (expected a JSON object)")
    return RunResult(summary, run_dir)


def metrics_rows(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of ``run_dir/metrics.csv`` as strings (empty when missing or unreadable)."""
    try:
        with open(Path(run_dir) / "metrics.csv", newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []
