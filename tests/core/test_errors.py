"""All error types live in chanloss.core.errors and stay importable from their old homes; divergence
is a typed error (tune tells a diverged trial from a failed one by type, not by message)."""

from __future__ import annotations

import copy
import importlib

import pytest
from tiny_config import TINY

from chanloss.config import load_config
from chanloss.core import errors
from chanloss.core.atomic import atomic_open, write_text
from chanloss.run.session import train

OLD_HOMES = {
    "chanloss.run": ["CheckpointError"],
    "chanloss.config": ["ConfigError", "YAMLLimitError"],
    "chanloss.run.checkpoint": ["CheckpointError"],
    "chanloss.run.run_dir": ["RunDirBusy", "NonFiniteStateError"],
    "chanloss.run.trainer": ["NonFiniteLossError", "TrainingInterrupted"],
    "chanloss.run.distributed": ["LossInputError"],
    "chanloss.inference": ["InferenceError"],
    "chanloss.data": ["DatasetError", "DatasetFileNotFoundError"],
    "chanloss.data.datasets": ["UnsafePickleError"],
    "chanloss.tuning": ["TuneInterrupted"],
    "chanloss.cli": ["UsageError"],
}


@pytest.mark.parametrize("module", sorted(OLD_HOMES))
def test_old_import_paths_give_the_same_classes(module: str) -> None:
    loaded = importlib.import_module(module)
    for name in OLD_HOMES[module]:
        assert getattr(loaded, name) is getattr(errors, name), f"{module}.{name}"


def test_every_error_in_all_is_an_exception_type() -> None:
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), BaseException), name
    # user errors print as one line and exit 2: they are ConfigErrors
    for name in ("CheckpointError", "InferenceError", "RunDirBusy", "TrainingDiverged"):
        assert issubclass(getattr(errors, name), errors.ConfigError), name
    assert issubclass(errors.NonFiniteLossError, errors.TrainingDiverged)


def test_a_diverged_run_raises_the_typed_error(tmp_path) -> None:
    raw = copy.deepcopy(TINY)
    config = load_config(raw=raw, overrides=["optim.lr=1e30", "optim.momentum=0.0"])
    with pytest.raises(errors.TrainingDiverged, match="training diverged in epoch 1"):
        train(config, tmp_path / "run", verbose=0)


def test_tune_counts_only_the_typed_error_as_divergence() -> None:
    from chanloss.tuning.trials import _diverged

    assert _diverged(errors.TrainingDiverged("loss nan"))
    assert _diverged(errors.NonFiniteLossError("loss 'ce' (nan)"))
    assert not _diverged(errors.ConfigError("the word diverged in another error"))


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path) -> None:
    path = tmp_path / "a.txt"
    write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
