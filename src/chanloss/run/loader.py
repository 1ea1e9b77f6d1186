"""The one checkpoint loader: a run's checkpoint back as a model (with or without its data).

Every command that reads a trained model goes through :func:`load_run`: ``eval``, ``analyze``,
``predict``/``export`` (:func:`chanloss.inference.load_model`) and ``tune``'s final test score.

- :func:`resolve_checkpoint` accepts a checkpoint file or a run directory; a directory means
  its ``best.pt`` (or ``last.pt`` when the run has no ``best.pt``, saying which on stderr).
- :func:`read_checkpoint` reads the file as data (``torch.load(weights_only=True)``) and
  validates the config stored in it; every failure is one :class:`CheckpointError` that says
  what the file is and that a run's ``last.pt``/``best.pt`` was expected.
- :func:`load_run` rebuilds the model (:func:`~chanloss.run.builders.model_from_checkpoint`)
  and the losses and loads their weights; with ``with_data=True`` it builds the run's whole
  :class:`~chanloss.run.trainer.Trainer` (data, augmentation, batches) around them instead.
- :func:`load_for_eval` builds the model, the losses and the evaluation batches only (an
  :class:`~chanloss.run.evaluator.Evaluator`: no optimiser, schedule or DDP wrapper).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from chanloss.config import TrainConfig, validate_config
from chanloss.config.schema import upgrade_stored_config
from chanloss.core.errors import CheckpointError, ConfigError
from chanloss.run.builders import LossSlot, build_losses, model_from_checkpoint
from chanloss.run.checkpoint import EXPECTED, describe, load_checkpoint

if TYPE_CHECKING:
    from chanloss.run.evaluator import Evaluator
    from chanloss.run.trainer import Trainer

__all__ = [
    "LoadedRun",
    "StoredCheckpoint",
    "load_for_eval",
    "load_run",
    "read_checkpoint",
    "resolve_checkpoint",
]

CHECKPOINT_NAMES = ("best.pt", "last.pt")  # what a run directory stands for, first found


def resolve_checkpoint(path: str | Path, *, quiet: bool = False) -> Path:
    """``path`` itself when it is a file; for a run directory its ``best.pt``, else its
    ``last.pt`` (a line on stderr says which, unless ``quiet``).

    A missing path, or a directory with neither file, is a :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}")
        return path
    for name in CHECKPOINT_NAMES:
        candidate = path / name
        if candidate.is_file():
            if not quiet:
                why = "" if name == "best.pt" else " (it has no best.pt)"
                print(
                    f"chanloss: {path} is a run directory: using its {name}{why}", file=sys.stderr
                )
            return candidate
    raise CheckpointError(
        f"checkpoint {path} is a directory with neither best.pt nor last.pt; {EXPECTED} "
        "(or the run directory that holds them)"
    )


@dataclass
class StoredCheckpoint:
    """A checkpoint read from ``path``: its ``state`` and the validated stored ``config``."""

    path: Path
    state: dict[str, Any]
    config: TrainConfig

    @property
    def num_classes(self) -> int:
        """The number of classes the run was trained on (from the checkpoint's ``meta``)."""
        return int(self._meta()["num_classes"])

    @property
    def in_channels(self) -> int:
        """The image channels the run's model takes (from the checkpoint's ``meta``)."""
        return int(self._meta().get("in_channels", 3))

    @property
    def meta(self) -> dict[str, Any]:
        """The checkpoint's ``meta`` (classes, channels, class names, preprocessing)."""
        return self._meta()

    def _meta(self) -> dict[str, Any]:
        meta = self.state.get("meta")
        if not isinstance(meta, dict) or "num_classes" not in meta:
            raise CheckpointError(f"{self.path} holds no meta (num_classes, in_channels)")
        return meta


def read_checkpoint(
    path: str | Path, *, device: str | None = None, quiet: bool = False
) -> StoredCheckpoint:
    """Read the checkpoint at ``path`` (a file or a run directory, see
    :func:`resolve_checkpoint`) and validate its stored config, ``device`` replacing the stored
    device when given."""
    path = resolve_checkpoint(path, quiet=quiet)
    state = load_checkpoint(path, map_location="cpu")
    raw = state.get("config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds no config")
    if device is not None:
        raw = {**raw, "device": device}
    try:
        config = validate_config(upgrade_stored_config(raw), source=f"{path} (stored config)")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    return StoredCheckpoint(path, state, config)


@dataclass
class LoadedRun:
    """A run rebuilt from its checkpoint, weights loaded, in eval mode.

    ``model`` is the network, ``slots`` the losses (a margin head's or L-GM's ``logits`` score
    the classes); ``evaluator`` is the run's :class:`~chanloss.run.evaluator.Evaluator` (data,
    evaluation batches, class scores, accuracy) when it was loaded with its data, and
    ``trainer`` the run's whole trainer when it was loaded ``with_data``.
    """

    checkpoint: StoredCheckpoint
    model: nn.Module
    slots: list[LossSlot]
    trainer: Trainer | None = None
    evaluator: Evaluator | None = None

    @property
    def path(self) -> Path:
        """The checkpoint file."""
        return self.checkpoint.path

    @property
    def state(self) -> dict[str, Any]:
        """The checkpoint's contents."""
        return self.checkpoint.state

    @property
    def config(self) -> TrainConfig:
        """The run's validated config (the device as requested)."""
        return self.checkpoint.config

    @property
    def head(self) -> LossSlot | None:
        """The loss that scores the classes instead of the model's classifier, if any."""
        return next((s for s in self.slots if s.loss.provides_logits), None)


def _stored(
    path: str | Path | StoredCheckpoint, device: str | None, quiet: bool
) -> StoredCheckpoint:
    if isinstance(path, StoredCheckpoint):
        return path
    return read_checkpoint(path, device=device, quiet=quiet)


def load_run(
    path: str | Path | StoredCheckpoint,
    *,
    device: str | None = "auto",
    with_data: bool = False,
    out_dir: str | Path | None = None,
    quiet: bool = False,
) -> LoadedRun:
    """Rebuild the run of the checkpoint at ``path`` (a file, a run directory, or a checkpoint
    already read by :func:`read_checkpoint`) and load its weights; the model and losses are
    left in eval mode.

    ``device`` replaces the stored config's device (``None`` keeps it). ``with_data=True``
    builds the run's :class:`~chanloss.run.trainer.Trainer` (its data set must be available),
    writing into ``out_dir`` (default: the checkpoint's directory); otherwise only the model and
    the losses are built, from the checkpoint's ``meta``, and on the CPU. To score a model on
    its data without an optimiser, use :func:`load_for_eval`.
    """
    stored = _stored(path, device, quiet)
    if with_data:
        from chanloss.run.trainer import Trainer

        target = Path(out_dir) if out_dir is not None else stored.path.parent
        trainer = Trainer(stored.config, target, verbose=0, checkpoint_state=stored.state)
        return _loaded(stored, trainer.model, trainer.slots, trainer, trainer)
    model = model_from_checkpoint(
        stored.config,
        stored.state,
        num_classes=stored.num_classes,
        in_channels=stored.in_channels,
    )
    slots = build_losses(stored.config, model, stored.num_classes)
    return _loaded(stored, model, slots, None, None)


def load_for_eval(
    path: str | Path | StoredCheckpoint,
    *,
    device: str | None = "auto",
    evaluate_test: bool = True,
    quiet: bool = False,
) -> LoadedRun:
    """The run of the checkpoint at ``path`` (as for :func:`load_run`) with its data: model,
    losses and evaluation batches, weights loaded, in eval mode, and no optimiser, scheduler,
    training batches or DDP wrapper (``eval``, ``analyze``, ``prune``'s scoring).

    The result's ``evaluator`` (:class:`~chanloss.run.evaluator.Evaluator`) gives the class
    scores, predictions and accuracy of the ``val``/``test`` splits (no ``test`` when
    ``evaluate_test=False``); ``device`` replaces the stored config's device (``None`` keeps it).
    """
    from chanloss.run.build import build_eval_parts
    from chanloss.run.evaluator import Evaluator

    stored = _stored(path, device, quiet)
    parts = build_eval_parts(
        stored.config, evaluate_test=evaluate_test, checkpoint_state=stored.state
    )
    evaluator = Evaluator(parts)
    return _loaded(stored, evaluator.model, evaluator.slots, None, evaluator)


def _loaded(
    stored: StoredCheckpoint,
    model: nn.Module,
    slots: list[LossSlot],
    trainer: Trainer | None,
    evaluator: Evaluator | None,
) -> LoadedRun:
    """The :class:`LoadedRun`, with the checkpoint's weights loaded and in eval mode."""
    _load_weights(stored, model, slots)
    model.eval()
    for slot in slots:
        slot.loss.eval()
    return LoadedRun(stored, model, slots, trainer, evaluator)


def _load_weights(stored: StoredCheckpoint, model: nn.Module, slots: list[LossSlot]) -> None:
    state = stored.state
    try:
        model.load_state_dict(state["model"])
        if len(state["losses"]) != len(slots):
            raise RuntimeError(f"{len(state['losses'])} losses saved, {len(slots)} built")
        for slot, part in zip(slots, state["losses"], strict=True):
            slot.loss.load_state_dict(part)
    except (RuntimeError, KeyError, IndexError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{stored.path} does not fit its own config ({describe(err)})"
        ) from None
