"""Every error type of chanloss, in one module that imports nothing of the package (nor any
third-party library: the command line imports it for ``--help``).

A user-caused failure is a :class:`ConfigError` (or a subclass): the command line prints it as
one line ``chanloss: error: ...`` and exits with status 2. The other types say what kind of
failure it was, so a caller can catch one kind without reading messages:

- :class:`TrainingDiverged` (and its subclass :class:`NonFiniteLossError`): the loss became
  NaN/inf; ``tune`` records such a trial as diverged.
- :class:`CheckpointError`, :class:`InferenceError`, :class:`RunDirBusy`,
  :class:`NonFiniteStateError`, :class:`PruneError`: the checkpoint, prediction/export input,
  run directory lock, saved state and pruning request.
- :class:`DatasetError` / :class:`DatasetFileNotFoundError`, :class:`UnsafePickleError`: data
  files; :class:`YAMLLimitError`: a YAML text over a size limit; :class:`LossInputError`: a
  loss refused its input during a training step.
- :class:`TrainingInterrupted` / :class:`TuneInterrupted`: Ctrl-C or a stop signal (these are
  ``KeyboardInterrupt``s; the run's files were saved).

The types are also importable from where they were defined before (``chanloss.run``,
``chanloss.config``, ``chanloss.run.checkpoint``, ``chanloss.inference``, ...).
"""

from __future__ import annotations

import pickle
import signal
from pathlib import Path

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "DatasetFileNotFoundError",
    "InferenceError",
    "LossInputError",
    "NonFiniteLossError",
    "NonFiniteStateError",
    "PruneError",
    "RunDirBusy",
    "TrainingDiverged",
    "TrainingInterrupted",
    "TuneInterrupted",
    "UnsafePickleError",
    "UsageError",
    "YAMLLimitError",
]


class ConfigError(ValueError):
    """A user error in a configuration, an override, a file or a checkpoint (one-line message)."""


class UsageError(Exception):
    """A bad command line (printed as one line, exit status 2)."""


class YAMLLimitError(ValueError):
    """YAML text over one of the loader's limits (one line).

    A ``ValueError`` rather than a ``yaml.YAMLError`` so that this module (imported by the
    command line's ``--help``) does not import PyYAML.
    """


class CheckpointError(ConfigError):
    """A checkpoint that cannot be read or does not fit the run."""


class InferenceError(ConfigError):
    """A bad input to prediction or export (not an image, a bad ``topk``, an unknown format)."""


class PruneError(ConfigError):
    """A bad ``chanloss prune`` request: speedup, method, a model with nothing to prune."""


class RunDirBusy(ConfigError):
    """The run directory is owned by another live run (one-line message naming it)."""


class NonFiniteStateError(ConfigError):
    """A checkpoint would hold NaN/inf parameters or buffers; the previous file is kept."""


class TrainingDiverged(ConfigError):
    """Training diverged: an epoch's mean loss (or a step's loss) was NaN or infinite.

    ``tune`` catches this type to record a trial as diverged rather than failed.
    """


class NonFiniteLossError(TrainingDiverged):
    """A loss term became NaN or infinite (``on_nonfinite: stop``); the last checkpoint is kept."""


class LossInputError(ValueError):
    """A loss refused its input during a training step (``check_finite``: NaN/inf logits or
    features); ``index`` is the loss's position in ``losses``."""

    def __init__(self, index: int, err: ValueError) -> None:
        super().__init__(str(err))
        self.index = index


class DatasetError(ValueError):
    """A data-set file is malformed; the message names the file and what was expected."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A data-set file is missing (both a ``ValueError`` and a ``FileNotFoundError``)."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that refers to something other than plain data (it could run code)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT), SIGTERM or SIGUSR1 during training: the current step was finished and
    ``last.pt`` written.

    ``out_dir`` is the run directory to pass to ``--resume``; ``signum`` the signal (the
    command line exits with ``128 + signum``: 130, 143, 138).
    """

    def __init__(self, message: str, out_dir: Path, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.out_dir = out_dir
        self.signum = int(signum)


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``tune``: running trials were marked for a rerun; continue with --resume."""

    def __init__(self, message: str, out_dir: Path) -> None:
        super().__init__(message)
        self.out_dir = out_dir
