"""Training, evaluation and comparison of models trained with the configured losses.

``load_config`` reads and validates a YAML config (the schema in
:mod:`chanloss.training.config` is the reference for every key); ``train`` runs it into a run
directory and returns a ``RunResult`` (``read_result`` reads one back from a run directory);
``load_run`` rebuilds a run from its checkpoint; ``evaluate_checkpoint`` scores a checkpoint;
``run_many`` runs a set of runs in processes; ``compare`` runs several configs over seeds and
tabulates the final test accuracy.

The names are imported on first use, so that ``chanloss.training.config`` (and the command
line's ``--help``) can be used without importing torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chanloss.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from chanloss.training.compare import compare, load_labelled, results_table
    from chanloss.training.config import (
        ConfigError,
        TrainConfig,
        apply_overrides,
        dump_config,
        load_config,
        parse_overrides,
        validate_config,
    )
    from chanloss.training.distributed import is_main_process
    from chanloss.training.evaluate import evaluate_checkpoint
    from chanloss.training.loader import load_run
    from chanloss.training.result import RunResult, read_result
    from chanloss.training.runner import run_many
    from chanloss.training.session import train
    from chanloss.training.trainer import Trainer

_WHERE = {
    "CheckpointError": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "compare": "compare",
    "load_labelled": "compare",
    "results_table": "compare",
    "ConfigError": "config",
    "TrainConfig": "config",
    "apply_overrides": "config",
    "dump_config": "config",
    "load_config": "config",
    "parse_overrides": "config",
    "validate_config": "config",
    "is_main_process": "distributed",
    "evaluate_checkpoint": "evaluate",
    "load_run": "loader",
    "RunResult": "result",
    "read_result": "result",
    "run_many": "runner",
    "Trainer": "trainer",
    "train": "session",
}

__all__ = [
    "CheckpointError",
    "ConfigError",
    "RunResult",
    "TrainConfig",
    "Trainer",
    "apply_overrides",
    "compare",
    "dump_config",
    "evaluate_checkpoint",
    "is_main_process",
    "load_checkpoint",
    "load_config",
    "load_labelled",
    "load_run",
    "read_result",
    "parse_overrides",
    "results_table",
    "run_many",
    "save_checkpoint",
    "train",
    "validate_config",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


class _Package(types.ModuleType):
    """This package; the function ``compare`` wins over the submodule of the same name (which
    the import system sets as an attribute of the package once it is imported)."""

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if isinstance(value, types.ModuleType) and _WHERE.get(name) == name:
            return getattr(value, name)
        return value


sys.modules[__name__].__class__ = _Package
