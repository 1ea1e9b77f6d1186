"""Centre loss, Wen et al., ECCV 2016."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from chanloss.core.validation import check_choice, check_float, check_int
from chanloss.losses import distributed
from chanloss.losses.base import Loss
from chanloss.losses.registry import register_loss
from chanloss.losses.search import LogUniform

CENTER_UPDATES = ("paper", "sgd")


@register_loss("center")
class CenterLoss(Loss):
    """Centre loss: Y. Wen, K. Zhang, Z. Li, Y. Qiao, "A Discriminative Feature Learning
    Approach for Deep Face Recognition", ECCV 2016.

    Paper, equation 2: ``L_C = 1/2 sum_i ||x_i - c_{y_i}||^2`` over the embeddings ``x_i`` and
    the centres ``c_j`` (shape ``(num_classes, embedding_dim)``, Xavier-initialised as in the
    authors' Caffe prototxt). Batch reduction (ours, as in the authors' Caffe layer): the sum is
    divided by the batch size, i.e. the mean over the batch of ``1/2 ||x_i - c_{y_i}||^2``.

    It is used jointly with softmax cross-entropy (paper eq. 5, ``L = L_S + lambda L_C``):
    two entries in a config, ``ce`` and ``center``. ``weight`` is lambda, default 0.003 (the
    paper's face-recognition setting; the authors' example prototxt uses 0.008).

    Centre updates, ``center_update``:

    - ``"paper"`` (default): the paper's rule (eq. 4 and Algorithm 1; the authors' Caffe
      ``CenterLossLayer``), ``delta c_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)`` and
      ``c_j <- c_j - alpha * delta c_j`` (``alpha = 0.5``, the paper's value), where ``n_j`` is
      the number of samples of class ``j`` in the batch; classes absent from the batch do not
      move. The centres are a buffer (not a parameter: the optimiser, its learning rate and its
      weight decay never touch them) and are moved by :meth:`update_state`, which the trainer
      calls once per training step after the optimiser step, with the (detached) embeddings
      and labels of that step's forward pass, so the update uses the centres the loss was
      computed with, as in the Caffe layer. ``terms`` itself changes nothing. Under
      ``torch.distributed`` the embeddings and labels of all ranks are all-gathered first, so
      every rank applies the same update computed on the global batch and the centres stay
      identical across ranks (DDP's buffer broadcast from rank 0 then changes nothing).
    - ``"sgd"``: the centres are an ``nn.Parameter`` moved by the optimiser from the gradient
      of ``weight * L_C``, ``weight / B * sum_{i: y_i = j} (c_j - x_i)``, at the loss entry's
      ``lr`` (and with weight decay); ``alpha`` is not used. Reproducing the paper's step then
      needs ``lr = alpha * B / (weight * (1 + n_j))`` (about 2e4 for ``alpha = 0.5``,
      ``lambda = 0.003``, ``B = 256``, ``n_j = 1``), which no single rate does for all
      ``n_j``.

    Either way the centres are in ``state_dict()`` under ``"centers"``, so checkpoints keep
    them (and one saved under one mode loads into the other).

    Consumes ``embedding`` ``(B, D)``. Terms: ``{"center": ...}``; ``weights = {"center": weight}``.
    """

    consumes = "embedding"
    #: What ``chanloss tune`` varies (see chanloss.losses.search).
    search_space = {"weight": LogUniform(1e-3, 10.0)}

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_dim: int,
        weight: float = 0.003,
        center_update: str = "paper",
        alpha: float = 0.5,
        check_finite: bool = False,
    ) -> None:
        super().__init__(
            weights={"center": check_float("weight", weight)}, check_finite=check_finite
        )
        self.num_classes = check_int("num_classes", num_classes, low=1)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, low=1)
        self.center_update = check_choice("center_update", center_update, CENTER_UPDATES)
        self.alpha = check_float("alpha", alpha, low=0.0, high=1.0)
        centers = torch.empty(self.num_classes, self.embedding_dim)
        nn.init.xavier_uniform_(centers)
        if self.center_update == "sgd":
            self.centers = nn.Parameter(centers)
        else:
            self.register_buffer("centers", centers)

    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        centers = self.centers.to(inputs.dtype).index_select(0, labels)
        return {"center": 0.5 * (inputs - centers).square().sum(dim=1).mean()}

    @torch.no_grad()
    def update_state(self, inputs: Tensor, labels: Tensor) -> None:
        """Move the centres by the paper's rule (``center_update="paper"``; else nothing).

        ``inputs`` are the ``(B, D)`` embeddings of the step's forward pass and ``labels`` its
        labels; with several ranks both are all-gathered (one collective each).
        """
        if self.center_update != "paper" or not self.training:
            return
        inputs, labels = self.validate(inputs.detach(), labels)
        if distributed.is_distributed():
            inputs = distributed.all_gather_no_grad(inputs)
            labels = distributed.all_gather_no_grad(labels)
        c = self.centers
        diff = c.index_select(0, labels) - inputs.to(c.dtype)  # c_{y_i} - x_i
        sums = torch.zeros_like(c).index_add_(0, labels, diff)
        counts = torch.bincount(labels, minlength=self.num_classes).to(c.dtype)
        c.sub_(sums / (1.0 + counts).unsqueeze(1), alpha=self.alpha)

    def extra_repr(self) -> str:
        alpha = f", alpha={self.alpha:g}" if self.center_update == "paper" else ""
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"center_update={self.center_update!r}{alpha}, {super().extra_repr()}"
        )
