"""Competing Ratio Loss (Zhang, Wang, Guo, Zhao, Ma, Han; ICIP 2019 and the journal version)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from chanloss.core.validation import check_float
from chanloss.losses.base import Loss
from chanloss.losses.registry import register_loss
from chanloss.losses.search import Uniform


@register_loss("competing_ratio")
class CompetingRatioLoss(Loss):
    """Competing Ratio Loss, CRL (Zhang et al., "Competing ratio loss for training deep
    convolutional neural networks", ICIP 2019 / "Competing Ratio Loss for Discriminative
    Multi-class Image Classification", arXiv 1912.11642; code: PRIS-CV/CRL-code).

    The ratio of the true class's softmax posterior ``p_y`` to the (offset) posterior mass of
    the competing classes, raised to ``beta``::

        crl = mean_i -log( p_y / (alpha + sum_{j != y} p_j) ** beta )
            = mean_i -log p_y + beta * log(alpha + 1 - p_y)

    This is the authors' released code, ``log((a - p_y) ** beta / p_y)`` with ``a = 1 + alpha``
    (their scripts use ``a = 1``, i.e. ``alpha = 0``, in folders named ``alpha_0``, and
    ``beta`` in {0.25, 0.5, 0.75}); like that code, ``p_y`` is clamped to ``[eps, 1 - eps]``
    (``eps = 1e-7``), which bounds the loss from below when ``alpha = 0`` and stops the
    gradient once ``p_y > 1 - eps``. (The code also adds ``1e-7`` inside the log; we leave that
    out.) With ``alpha >= 1`` the loss is never negative, the property the paper asks of its
    hyper-parameters; ``beta = 0`` gives cross-entropy. The paper's equation numbers could
    not be read from the sources we had.

    Defaults: ``alpha = 0.0`` and ``beta = 0.5`` (the authors' CIFAR scripts), ``eps = 1e-7``.
    Everything is computed in log space from the logits (``log sum_{j != y} p_j`` is a
    log-sum-exp over the other classes), so it is finite for any finite logits.
    Terms: ``{"crl": crl}``; ``weights = {"crl": weight}``. Needs ``K >= 2`` classes.
    """

    consumes = "logits"
    #: What ``chanloss tune`` varies (see chanloss.losses.search).
    search_space = {"alpha": Uniform(0.0, 1.0), "beta": Uniform(0.0, 1.0)}

    def __init__(
        self,
        *,
        alpha: float = 0.0,
        beta: float = 0.5,
        eps: float = 1e-7,
        weight: float = 1.0,
        check_finite: bool = False,
    ) -> None:
        super().__init__(weights={"crl": check_float("weight", weight)}, check_finite=check_finite)
        self.alpha = check_float("alpha", alpha, low=0.0)
        self.beta = check_float("beta", beta, low=0.0)
        self.eps = check_float("eps", eps, low=0.0, high=0.5, high_inclusive=False)

    def validate(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        inputs, labels = super().validate(inputs, labels)
        if inputs.shape[1] < 2:
            raise ValueError(
                "logits must have K >= 2 classes (the loss needs competing classes), "
                f"got shape {tuple(inputs.shape)}"
            )
        return inputs, labels

    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        if kwargs:
            raise ValueError(f"CompetingRatioLoss takes no keyword arguments, got {sorted(kwargs)}")
        index = labels.unsqueeze(1)
        log_total = torch.logsumexp(inputs, dim=1)
        log_p = inputs.gather(1, index).squeeze(1) - log_total
        others = inputs.scatter(1, index, float("-inf"))
        log_competing = torch.logsumexp(others, dim=1) - log_total
        if self.eps > 0.0:
            low, high = math.log(self.eps), math.log1p(-self.eps)
            log_p = log_p.clamp(low, high)
            log_competing = log_competing.clamp(low, high)
        if self.alpha > 0.0:
            log_competing = torch.logaddexp(
                log_competing, log_competing.new_tensor(math.log(self.alpha))
            )
        return {"crl": (self.beta * log_competing - log_p).mean()}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}, eps={self.eps:g}, {super().extra_repr()}"
