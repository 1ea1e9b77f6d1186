"""What pruning scores a model with: the run's evaluation part (its data, evaluation
preprocessing and class scores; :func:`~chanloss.run.loader.load_for_eval`, no optimiser,
schedule or DDP wrapper), the calibration images, the validation images and accuracies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from chanloss.pruning.criteria import Calibration

__all__ = ["Scoring", "accuracies", "accuracy", "calibration_images"]


@dataclass
class Scoring:
    """How the run evaluates, from its :class:`~chanloss.run.evaluator.Evaluator`: the data
    (``data``, on ``device``), the evaluation preprocessing and the class scores (a margin
    head's / L-GM's ``logits(embedding)``, else the model's logits)."""

    evaluator: Any

    @property
    def data(self) -> Any:
        """The run's DataBundle (loaded once, by the plan)."""
        return self.evaluator.data

    @property
    def device(self) -> torch.device:
        return self.evaluator.device

    def prepare(self, x: Tensor) -> Tensor:
        """A batch as the model sees it at evaluation (the run's preprocessing, memory format)."""
        from chanloss.run.epoch import prepare

        return prepare(x, self.evaluator.eval_aug, self.evaluator.config.channels_last)

    def scores(self, model: nn.Module, x: Tensor) -> Tensor:
        """The run's class scores of ``model`` on ``x`` (what its evaluation ranks)."""
        return self.evaluator.class_scores(model(x))

    def has(self, split: str) -> bool:
        """Whether the run has the ``val``/``test`` split."""
        return split in self.evaluator.eval_batches

    def split(self, name: str) -> list[tuple[Tensor, Tensor]]:
        """The prepared batches of the ``val`` or ``test`` split."""
        return [(self.prepare(x), y) for x, y in self.evaluator.eval_batches[name].epoch()]


def calibration_images(
    scoring: Scoring, options: dict[str, Any]
) -> tuple[Calibration, list[tuple[Tensor, Tensor]], str]:
    """Calibration batches from the training split (seeded shuffle, evaluation preprocessing);
    the validation batches (the val split, or held-out training images when there is none)
    and what they are."""
    from chanloss.run.builders import Batches

    has_val = scoring.data.val is not None
    want = int(options["calibration_images"])
    holdout_want = 0 if has_val else int(options["holdout_images"])
    source = Batches(
        scoring.data.train,
        batch_size=64,
        device=scoring.device,
        train=True,
        seed=int(options["seed"]),
    )
    calibration, holdout, taken = [], [], 0
    with torch.no_grad():
        for x, y in source.epoch(0):
            x = scoring.prepare(x)
            if taken < want:
                n = min(want - taken, y.shape[0])
                calibration.append((x[:n], y[:n]))
                x, y = x[n:], y[n:]
                taken += n
            if y.shape[0] and sum(b[1].shape[0] for b in holdout) < holdout_want:
                holdout.append((x, y))
            if taken >= want and sum(b[1].shape[0] for b in holdout) >= holdout_want:
                break
    source.close()
    if has_val:
        holdout = scoring.split("val")
        name = "validation split"
    else:
        name = (
            f"{sum(b[1].shape[0] for b in holdout)} held-out training images (no validation split)"
        )
    return Calibration(calibration, scoring.scores), holdout, name


@torch.no_grad()
def accuracy(
    model: nn.Module, scores: Any, batches: Sequence[tuple[Tensor, Tensor]]
) -> float | None:
    """Top-1 accuracy of ``model`` on ``batches`` (``None`` without batches)."""
    if not batches:
        return None
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((scores(model, x).argmax(1) == y).sum())
        total += int(y.shape[0])
    return correct / max(total, 1)


def accuracies(model: nn.Module, scoring: Scoring, holdout: Any) -> dict[str, Any]:
    """Accuracy on the val and test splits (and on ``holdout`` when there is no val split)."""
    out = {
        split: accuracy(model, scoring.scores, scoring.split(split)) if scoring.has(split) else None
        for split in ("val", "test")
    }
    if out["val"] is None and holdout:
        out["holdout"] = accuracy(model, scoring.scores, holdout)
    return out
