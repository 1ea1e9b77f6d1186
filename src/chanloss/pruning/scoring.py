"""What pruning scores a model with: the run's data, its evaluation preprocessing and its class
scores, built once without an optimiser (:func:`load_scoring`); the calibration images, the
validation images and accuracies.

The fine-tune (:mod:`chanloss.pruning.finetune`) builds the run's trainer; everything before it
needs only the data and the model, so nothing here has an optimiser, a schedule or a DDP
wrapper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from chanloss.pruning.criteria import Calibration

__all__ = ["Scoring", "accuracies", "accuracy", "calibration_images", "load_scoring"]


@dataclass
class Scoring:
    """The run's data on ``device`` and how the run evaluates: ``eval_aug`` (its evaluation
    preprocessing), ``eval_batches`` (val and test) and ``head`` (the loss that scores the
    classes instead of the model's classifier, if any)."""

    config: Any
    device: torch.device
    data: Any
    eval_aug: nn.Module
    eval_batches: dict[str, Any]
    head: Any

    def prepare(self, x: Tensor) -> Tensor:
        """A batch as the model sees it at evaluation (the run's preprocessing, memory format)."""
        with torch.no_grad():
            x = self.eval_aug(x)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def scores(self, model: nn.Module, x: Tensor) -> Tensor:
        """The run's class scores (what its evaluation ranks): a margin head's / L-GM's
        ``logits(embedding)``, else the model's logits."""
        out = model(x)
        if self.head is None:
            return out.logits
        return self.head.loss.logits(out.embedding)

    def split(self, name: str) -> list[tuple[Tensor, Tensor]]:
        """The prepared batches of the ``val`` or ``test`` split."""
        return [(self.prepare(x), y) for x, y in self.eval_batches[name].epoch()]


def load_scoring(config: Any, head: Any) -> Scoring:
    """Load the data of ``config`` once (seeded as a run seeds it) with its evaluation batches;
    ``head`` must already be on the config's device."""
    from chanloss.run.builders import (
        Batches,
        build_augmentations,
        build_data,
        resolve_device,
        seed_everything,
    )
    from chanloss.run.distributed import local_device

    device = local_device(resolve_device(config.device))
    seed_everything(config.seed)  # as a run does before it loads its data
    data = build_data(config)
    _, eval_aug = build_augmentations(config, data, device)
    eval_bs = config.eval_batch_size or 2 * config.batch_size
    eval_batches = {
        split: Batches(ds, batch_size=eval_bs, device=device, train=False, workers=config.workers)
        for split, ds in (("val", data.val), ("test", data.test))
        if ds is not None
    }
    return Scoring(config, device, data, eval_aug, eval_batches, head)


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
        split: accuracy(model, scoring.scores, scoring.split(split))
        if split in scoring.eval_batches
        else None
        for split in ("val", "test")
    }
    if out["val"] is None and holdout:
        out["holdout"] = accuracy(model, scoring.scores, holdout)
    return out
