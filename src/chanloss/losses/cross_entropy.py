"""Softmax cross-entropy."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from chanloss.core.validation import check_float
from chanloss.losses.base import Loss
from chanloss.losses.registry import register_loss


@register_loss("ce")
class CrossEntropyLoss(Loss):
    """Softmax cross-entropy, ``-log softmax(z)_y`` averaged over the batch.

    Terms: ``{"ce": ...}``; ``weights = {"ce": weight}``.
    """

    consumes = "logits"

    def __init__(self, *, weight: float = 1.0, check_finite: bool = False) -> None:
        super().__init__(weights={"ce": check_float("weight", weight)}, check_finite=check_finite)

    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(inputs, labels)}
