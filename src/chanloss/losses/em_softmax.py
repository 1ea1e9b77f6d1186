"""EM-Softmax: Ensemble soft-Margin Softmax loss (Wang, Zhang, Lei, Liu, Guo, Li; IJCAI 2018)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chanloss.core.validation import (
    check_float,
    check_int,
)
from chanloss.losses.base import Loss
from chanloss.losses.registry import register_loss
from chanloss.losses.search import IntRange, LogUniform, Uniform


@register_loss("em_softmax")
class EMSoftmaxLoss(Loss):
    """Ensemble soft-Margin Softmax loss, EM-Softmax (Wang et al., "Ensemble Soft-Margin
    Softmax Loss for Image Classification", IJCAI 2018, arXiv 1805.03922).

    ``V = num_classifiers`` linear classifiers ``W^v`` ``(K, D)`` on the embedding ``x``, scores
    ``f^v = W^v x``. Each is trained with the soft-margin softmax (the margin ``m`` is
    subtracted from the true class's score)::

        l^v_i = -log( e^{f^v_y - m} / (e^{f^v_y - m} + sum_{k != y} e^{f^v_k}) )

    and the classifiers are kept diverse with the Hilbert-Schmidt Independence Criterion
    between every pair of weight matrices, the ``K`` classes being the samples and a linear
    kernel ``G^v = W^v W^v^T``, ``H = I - 11^T / K``::

        HSIC(W^u, W^v) = tr(G^u H G^v H) / (K - 1)^2 = ||(H W^u)^T (H W^v)||_F^2 / (K - 1)^2

    - ``cls = sum_v mean_i l^v_i`` (the sum of the ``V`` soft-margin losses),
    - ``hsic = sum_{u < v} HSIC(W^u, W^v)`` (0 for ``V = 1``),
    - ``L = cls + hsic_weight * hsic``.

    Terms: ``{"cls": cls, "hsic": hsic}``; ``weights = {"cls": 1.0, "hsic": hsic_weight}``.
    ``logits(embedding)`` is the ensemble's score, the average ``(1/V) sum_v f^v`` without
    margin. The paper's text (equation numbers and chosen ``V``, ``m``, ``lambda``) was not
    available to us and no author code is public; the formulas above follow its abstract
    and method outline, and the defaults ``num_classifiers = 2``, ``margin = 1.0``,
    ``hsic_weight = 0.1`` are ours.

    ``weight`` ``(V, K, D)``: ``weight[v]`` has the layout of ``nn.Linear(D, K).weight`` and is
    initialised independently like one (uniform in ``+-1/sqrt(D)``). All members are
    evaluated at once (``einsum``); HSIC uses the ``(V, K, K)`` centred Gram matrices, or the
    ``(D, D)`` cross products of the member pairs when ``K`` is large (the same value, cheaper).
    """

    consumes = "embedding"
    #: What ``chanloss tune`` varies (see chanloss.losses.search).
    search_space = {
        "num_classifiers": IntRange(1, 4),
        "margin": Uniform(0.0, 2.0),
        "hsic_weight": LogUniform(1e-3, 1.0),
    }
    provides_logits = True

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_dim: int,
        num_classifiers: int = 2,
        margin: float = 1.0,
        hsic_weight: float = 0.1,
        check_finite: bool = False,
    ) -> None:
        super().__init__(
            weights={"cls": 1.0, "hsic": check_float("hsic_weight", hsic_weight, low=0.0)},
            check_finite=check_finite,
        )
        self.num_classes = check_int("num_classes", num_classes, low=2)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, low=1)
        self.num_classifiers = check_int("num_classifiers", num_classifiers, low=1)
        self.margin = check_float("margin", margin, low=0.0)
        self.weight = nn.Parameter(
            torch.empty(self.num_classifiers, self.num_classes, self.embedding_dim)
        )
        bound = 1.0 / math.sqrt(self.embedding_dim)
        nn.init.uniform_(self.weight, -bound, bound)

    # -- the API -----------------------------------------------------------------------------
    def compute_logits(self, x: Tensor) -> Tensor:
        """The ensemble's class scores ``(1/V) sum_v W^v x`` ``(B, K)``, without margin."""
        return F.linear(x, self.weight.to(x.dtype).mean(dim=0))

    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        if kwargs:
            raise ValueError(f"EMSoftmaxLoss takes no keyword arguments, got {sorted(kwargs)}")
        w = self.weight.to(inputs.dtype)
        scores = torch.einsum("bd,vkd->vbk", inputs, w)
        onehot = F.one_hot(labels, self.num_classes).to(scores.dtype)
        scores = scores - self.margin * onehot
        num_v, batch = self.num_classifiers, inputs.shape[0]
        cls = F.cross_entropy(scores.reshape(num_v * batch, -1), labels.repeat(num_v)) * num_v
        return {"cls": cls, "hsic": self._hsic(w)}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"num_classifiers={self.num_classifiers}, margin={self.margin:g}, "
            f"{super().extra_repr()}"
        )

    # -- internals ---------------------------------------------------------------------------
    def _hsic(self, w: Tensor) -> Tensor:
        """``sum_{u < v} HSIC(W^u, W^v)`` from the class-centred weights, by the cheaper of two
        equal forms: the ``(V, K, K)`` Gram matrices (``V K^2 D`` multiply-adds) or, when there
        are more classes than that pays for, the ``(P, D, D)`` cross products ``(H W^u)^T (H W^v)``
        of the ``P = V (V - 1) / 2`` pairs (``P K D^2``)."""
        num_v, k, d = w.shape
        if num_v == 1:
            return w.new_zeros(())
        centred = w - w.mean(dim=1, keepdim=True)
        if num_v * k <= (num_v * (num_v - 1) // 2) * d:
            gram = centred @ centred.transpose(1, 2)
            pair = torch.einsum("uij,vij->uv", gram, gram)
            total = 0.5 * (pair.sum() - pair.diagonal().sum())
        else:
            first, second = torch.triu_indices(num_v, num_v, 1, device=w.device)
            cross = centred[first].transpose(1, 2) @ centred[second]
            total = cross.pow(2).sum()
        return total / (k - 1) ** 2
