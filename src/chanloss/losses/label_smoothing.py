"""Cross-entropy with label smoothing, Szegedy et al., CVPR 2016."""

from __future__ import annotations

import torch
from torch import Tensor

from chanloss.core.validation import check_float, check_int
from chanloss.losses.base import Loss
from chanloss.losses.registry import register_loss
from chanloss.losses.search import Uniform


@register_loss("label_smoothing")
class LabelSmoothingLoss(Loss):
    """Label-smoothing regularisation: C. Szegedy, V. Vanhoucke, S. Ioffe, J. Shlens,
    Z. Wojna, "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.

    Paper, Section 7: the target distribution ``q'(k) = (1 - eps) delta_{k,y} + eps u(k)``
    with the uniform ``u(k) = 1/K``, so the loss is
    ``H(q', p) = (1 - eps) H(q, p) + eps H(u, p)
    = -(1 - eps) log p_y - (eps / K) sum_k log p_k``, averaged over the batch (the same as
    ``F.cross_entropy(..., label_smoothing=eps)``). Default ``smoothing`` (eps) ``= 0.1``,
    the paper's ImageNet value.

    Consumes logits ``(B, K)``; ``num_classes``, if given, must equal ``K``.
    Terms: ``{"label_smoothing": ...}``; ``weights = {"label_smoothing": weight}``.
    """

    consumes = "logits"
    #: What ``chanloss tune`` varies (see chanloss.losses.search).
    search_space = {"smoothing": Uniform(0.0, 0.3)}

    def __init__(
        self,
        *,
        smoothing: float = 0.1,
        num_classes: int | None = None,
        weight: float = 1.0,
        check_finite: bool = False,
    ) -> None:
        super().__init__(
            weights={"label_smoothing": check_float("weight", weight)}, check_finite=check_finite
        )
        self.smoothing = check_float(
            "smoothing", smoothing, low=0.0, high=1.0, high_inclusive=False
        )
        self.num_classes = (
            None if num_classes is None else check_int("num_classes", num_classes, low=1)
        )

    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        log_p = torch.log_softmax(inputs, dim=1)
        nll = -log_p.gather(1, labels.unsqueeze(1)).squeeze(1)
        uniform = -log_p.mean(dim=1)
        loss = (1.0 - self.smoothing) * nll + self.smoothing * uniform
        return {"label_smoothing": loss.mean()}

    def extra_repr(self) -> str:
        return (
            f"smoothing={self.smoothing:g}, num_classes={self.num_classes}, {super().extra_repr()}"
        )
