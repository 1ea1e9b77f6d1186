"""Centre loss, Wen et al., ECCV 2016."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from chanloss.losses._checks import check_float, check_int
from chanloss.losses.base import Loss
from chanloss.losses.registry import register_loss


@register_loss("center")
class CenterLoss(Loss):
    """Centre loss: Y. Wen, K. Zhang, Z. Li, Y. Qiao, "A Discriminative Feature Learning
    Approach for Deep Face Recognition", ECCV 2016.

    Paper, equation 2: ``L_C = 1/2 sum_i ||x_i - c_{y_i}||^2`` over the embeddings ``x_i`` and
    the learnable centres ``c_j`` (an ``nn.Parameter`` of shape ``(num_classes,
    embedding_dim)``, Xavier-initialised as in the authors' Caffe prototxt). Batch reduction
    (ours, as in the authors' Caffe layer): the sum is divided by the batch size, i.e. the
    mean over the batch of ``1/2 ||x_i - c_{y_i}||^2``.

    It is used jointly with softmax cross-entropy (paper eq. 5, ``L = L_S + lambda L_C``):
    two entries in a config, ``ce`` and ``center``. ``weight`` is lambda, default 0.003 (the
    paper's face-recognition setting; the authors' example prototxt uses 0.008).

    Centre updates: the paper updates the centres with its own rule (eq. 4) and rate
    ``alpha`` (0.5): ``c_j -= alpha * sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)``. Here the
    centres are ordinary parameters updated by the optimiser from the gradient of
    ``weight * L_C``, which is ``weight / B * sum_{i: y_i = j} (c_j - x_i)``; the trainer
    gives loss parameters their own learning rate (``lr`` in the loss's config entry). SGD
    with ``lr = alpha * B / (weight * (1 + n_j))`` reproduces the paper's step for a class
    with ``n_j`` samples in the batch, so the centres need a much larger rate than the
    network (alpha = 0.5, lambda = 0.003, B = 256, n_j = 1 gives about 2e4).

    Consumes ``embedding`` ``(B, D)``. Terms: ``{"center": ...}``; ``weights = {"center": weight}``.
    """

    consumes = "embedding"

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_dim: int,
        weight: float = 0.003,
        check_finite: bool = False,
    ) -> None:
        super().__init__(
            weights={"center": check_float("weight", weight)}, check_finite=check_finite
        )
        self.num_classes = check_int("num_classes", num_classes, low=1)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, low=1)
        self.centers = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim))
        nn.init.xavier_uniform_(self.centers)

    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        centers = self.centers.to(inputs.dtype).index_select(0, labels)
        return {"center": 0.5 * (inputs - centers).square().sum(dim=1).mean()}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"{super().extra_repr()}"
        )
