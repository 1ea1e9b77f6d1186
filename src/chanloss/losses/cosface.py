"""Large margin cosine loss (CosFace / AM-Softmax), Wang et al., 2018."""

from __future__ import annotations

from torch import Tensor

from chanloss.core.validation import check_float
from chanloss.losses._margin import MarginHead, cosine, replace_target, unit
from chanloss.losses.registry import register_loss
from chanloss.losses.search import Choice, Uniform


@register_loss("cosface")
class CosFaceLoss(MarginHead):
    """CosFace / LMCL: H. Wang, Y. Wang, Z. Zhou, X. Ji, D. Gong, J. Zhou, Z. Li, W. Liu,
    "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018
    (arXiv 1801.09414). The same loss is AM-Softmax (F. Wang, J. Cheng, W. Liu, H. Liu,
    "Additive Margin Softmax for Face Verification", IEEE SPL 2018).

    Paper, equation 4 (LMCL): embeddings and class weights are L2-normalised and the scores
    are ``s cos(theta_j)`` for ``j != y`` and ``s (cos(theta_y) - m)`` for the true class;
    the loss is their softmax cross-entropy, the mean over the batch.

    Defaults: ``scale`` (s) ``= 64`` and ``margin`` (m) ``= 0.35``, the CosFace paper's
    setting (AM-Softmax uses s = 30, m = 0.35). ``margin = 0`` gives the normalised softmax
    (NormFace) with temperature ``1/s``.

    Terms: ``{"cosface": ...}``; ``weights = {"cosface": weight}``. ``logits(embedding)`` is
    ``s cos(theta_j)`` without margin.
    """

    term = "cosface"
    #: What ``chanloss tune`` varies (see chanloss.losses.search).
    search_space = {"scale": Choice((16.0, 32.0, 64.0)), "margin": Uniform(0.0, 0.5)}

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_dim: int,
        scale: float = 64.0,
        margin: float = 0.35,
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
        self.margin = check_float("margin", margin, low=0.0)

    def plain_logits(self, x: Tensor, w: Tensor) -> Tensor:
        return self.scale * cosine(unit(x), unit(w))

    def margin_logits(self, x: Tensor, w: Tensor, labels: Tensor) -> Tensor:
        cos = cosine(unit(x), unit(w))
        cos_y = cos.gather(1, labels.unsqueeze(1)).squeeze(1)
        return replace_target(cos, labels, cos_y - self.margin) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:g}, margin={self.margin:g}"
