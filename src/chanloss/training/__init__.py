"""Training, evaluation and comparison of models trained with the configured losses.

``load_config`` reads and validates a YAML config (the schema in
:mod:`chanloss.training.config` is the reference for every key); ``train`` runs it into a run
directory; ``evaluate_checkpoint`` scores a checkpoint; ``compare`` runs several configs over
seeds and tabulates the final test accuracy.
"""

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
from chanloss.training.trainer import Trainer, train

__all__ = [
    "CheckpointError",
    "ConfigError",
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
    "parse_overrides",
    "results_table",
    "save_checkpoint",
    "train",
    "validate_config",
]
