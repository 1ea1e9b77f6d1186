"""Additive angular margin loss (ArcFace), Deng et al., CVPR 2019."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from chanloss.core.validation import check_float
from chanloss.losses._margin import MarginHead, cosine, replace_target, target_cos_sin, unit
from chanloss.losses.registry import register_loss
from chanloss.losses.search import Choice, Uniform


@register_loss("arcface")
class ArcFaceLoss(MarginHead):
    """ArcFace: J. Deng, J. Guo, N. Xue, S. Zafeiriou, "ArcFace: Additive Angular Margin Loss
    for Deep Face Recognition", CVPR 2019 (arXiv 1801.07698).

    Paper, equation 3: embeddings and class weights are L2-normalised and the scores are
    ``s cos(theta_j)`` for ``j != y`` and ``s cos(theta_y + m)`` for the true class; the loss
    is their softmax cross-entropy, the mean over the batch. Defaults ``scale`` (s) ``= 64``,
    ``margin`` (m) ``= 0.5`` (radians), as in the paper.

    ``cos(theta_y + m)`` stops decreasing once ``theta_y + m > pi``; as in the authors'
    insightface code, the true-class score there (``cos(theta_y) <= cos(pi - m)``) is
    ``cos(theta_y) - m sin(m)`` instead (note: this is not continuous at the switch). With
    ``easy_margin=True`` the margin is applied only where ``cos(theta_y) > 0`` and the score
    is ``cos(theta_y)`` elsewhere. ``cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m)``
    with ``sin(theta)`` computed from the vectors (accurate, finite gradient at theta = 0).

    Terms: ``{"arcface": ...}``; ``weights = {"arcface": weight}``. ``logits(embedding)`` is
    ``s cos(theta_j)`` without margin.
    """

    term = "arcface"
    #: What ``chanloss tune`` varies (see chanloss.losses.search).
    search_space = {"scale": Choice((16.0, 32.0, 64.0)), "margin": Uniform(0.05, 0.6)}

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_dim: int,
        scale: float = 64.0,
        margin: float = 0.5,
        easy_margin: bool = False,
        weight: float = 1.0,
        check_finite: bool = False,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            embedding_dim=embedding_dim,
            weight=weight,
            check_finite=check_finite,
        )
        self.scale = check_float("scale", scale, low=0.0, low_inclusive=False)
        self.margin = check_float("margin", margin, low=0.0, high=math.pi, high_inclusive=False)
        if not isinstance(easy_margin, bool):
            raise ValueError(f"easy_margin must be a bool, got {easy_margin!r}")
        self.easy_margin = easy_margin
        self._cos_m, self._sin_m = math.cos(self.margin), math.sin(self.margin)
        self._threshold = math.cos(math.pi - self.margin)

    def plain_logits(self, x: Tensor, w: Tensor) -> Tensor:
        return self.scale * cosine(unit(x), unit(w))

    def margin_logits(self, x: Tensor, w: Tensor, labels: Tensor) -> Tensor:
        x_hat, w_hat = unit(x), unit(w)
        cos_y, sin_y = target_cos_sin(x_hat, w_hat, labels)
        shifted = cos_y * self._cos_m - sin_y * self._sin_m
        if self.easy_margin:
            target = torch.where(cos_y > 0, shifted, cos_y)
        else:
            target = torch.where(
                cos_y > self._threshold, shifted, cos_y - self.margin * self._sin_m
            )
        return replace_target(cosine(x_hat, w_hat), labels, target) * self.scale

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, scale={self.scale:g}, margin={self.margin:g}, "
            f"easy_margin={self.easy_margin}"
        )
