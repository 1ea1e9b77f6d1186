"""Focal loss, Lin et al., ICCV 2017 (softmax, multi-class form)."""

from __future__ import annotations

import torch
from torch import Tensor

from chanloss.core.validation import check_float, check_int
from chanloss.losses.base import Loss
from chanloss.losses.registry import register_loss
from chanloss.losses.search import Uniform


@register_loss("focal")
class FocalLoss(Loss):
    """Focal loss: T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollar, "Focal Loss for Dense
    Object Detection", ICCV 2017.

    Paper, equation 4 (``FL(p_t) = -(1 - p_t)^gamma log(p_t)``), applied to the softmax
    probability of the true class: ``-(1 - p_y)^gamma log p_y``, averaged over the batch.
    ``gamma = 0`` is cross-entropy. Default ``gamma = 2``, the paper's choice.

    The paper's alpha-balanced form (eq. 5, ``alpha = 0.25``) weighs foreground against
    background in per-class sigmoid detection; with one softmax over classes a scalar alpha
    only rescales the loss, which the term weight ``weight`` already does, so there is no
    ``alpha`` argument. ``1 - p_y`` is computed as ``-expm1(log p_y)`` (accurate as
    ``p_y -> 1``) and floored at the smallest normal number before the power, so the gradient
    stays finite for ``gamma < 1``.

    Consumes logits ``(B, K)``; ``num_classes``, if given, must equal ``K``.
    Terms: ``{"focal": ...}``; ``weights = {"focal": weight}``.
    """

    consumes = "logits"
    #: What ``chanloss tune`` varies (see chanloss.losses.search).
    search_space = {"gamma": Uniform(0.0, 5.0)}

    def __init__(
        self,
        *,
        gamma: float = 2.0,
        num_classes: int | None = None,
        weight: float = 1.0,
        check_finite: bool = False,
    ) -> None:
        super().__init__(
            weights={"focal": check_float("weight", weight)}, check_finite=check_finite
        )
        self.gamma = check_float("gamma", gamma, low=0.0)
        self.num_classes = (
            None if num_classes is None else check_int("num_classes", num_classes, low=1)
        )

    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        log_p_y = torch.log_softmax(inputs, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
        if self.gamma == 0.0:
            return {"focal": (-log_p_y).mean()}
        one_minus_p = (-torch.expm1(log_p_y)).clamp(min=torch.finfo(log_p_y.dtype).tiny)
        return {"focal": (-(one_minus_p**self.gamma) * log_p_y).mean()}

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, num_classes={self.num_classes}, {super().extra_repr()}"
