"""A run's model and losses with its evaluation batches, no optimiser: :class:`Evaluator`.

What scoring a trained model on its data needs (``eval``; ``analyze`` and ``prune`` can use
it too): :func:`~chanloss.run.loader.load_for_eval` loads one from a checkpoint;
:class:`~chanloss.run.trainer.Trainer` extends it with what training needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from chanloss.config import TrainConfig
from chanloss.losses.objective import MultipleLosses
from chanloss.models.base import ModelOutput
from chanloss.run.batches import Batches
from chanloss.run.build import EvalParts
from chanloss.run.builders import LossSlot
from chanloss.run.epoch import evaluate, predict, prepare

__all__ = ["Evaluator"]


class Evaluator:
    """Class scores, predictions and top-1 accuracy of a run's model on its splits.

    ``losses`` is the run's :class:`~chanloss.losses.objective.MultipleLosses` (``slots``:
    each configured loss with its name, weight and metric columns); a margin head's or L-GM's
    ``logits(embedding)`` (``logit_slot``) score the classes instead of the model's classifier,
    as in training. ``eval_batches`` holds the ``val``/``test`` splits the run has.
    """

    def __init__(self, parts: EvalParts) -> None:
        self.config: TrainConfig = parts.config
        self.device: torch.device = parts.device
        self.data: Any = parts.data  # the DataBundle (splits, classes, statistics)
        self.model: nn.Module = parts.model
        self.slots: list[LossSlot] = parts.slots
        self.losses: MultipleLosses = parts.losses
        self.logit_slot: LossSlot | None = next(
            (s for s in parts.slots if s.loss.provides_logits), None
        )
        self.train_aug: nn.Module = parts.train_aug
        self.eval_aug: nn.Module = parts.eval_aug
        self.eval_batches: dict[str, Batches] = parts.eval_batches
        self.amp_dtype: torch.dtype = parts.amp_dtype

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.config.amp)

    def _prepare(self, x: Tensor, augment: nn.Module) -> Tensor:
        return prepare(x, augment, self.config.channels_last)

    def class_scores(self, out: ModelOutput) -> Tensor:
        """Accuracy logits: a margin head's / L-GM's ``logits(embedding)``, else the model's."""
        return self.losses.class_scores(out)

    def predict(self, split: str) -> Iterator[tuple[Tensor, Tensor]]:
        """``(scores, labels)`` batches of a split, in eval mode (no channel dropping)."""
        return predict(
            self.model,
            self.losses,
            self.eval_batches[split],
            self.eval_aug,
            autocast=self._autocast,
            channels_last=self.config.channels_last,
        )

    def accuracy(self, split: str) -> float:
        """Top-1 accuracy on a split."""
        return evaluate(self.predict(split), self.device)
