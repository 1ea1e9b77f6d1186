"""Large-margin softmax (L-Softmax), Liu et al., ICML 2016."""

from __future__ import annotations

from chanloss.losses._margin import AnnealedMultiplicativeMargin
from chanloss.losses.registry import register_loss
from chanloss.losses.search import IntRange, Uniform


@register_loss("lsoftmax")
class LSoftmaxLoss(AnnealedMultiplicativeMargin):
    """L-Softmax: W. Liu, Y. Wen, Z. Yu, M. Yang, "Large-Margin Softmax Loss for
    Convolutional Neural Networks", ICML 2016 (arXiv 1612.02295).

    Paper, equations 4-7: the loss is the softmax cross-entropy of the scores
    ``f_j = |W_j||x| cos(theta_j)`` for ``j != y`` and ``f_y = |W_y||x| psi(theta_y)`` with
    ``psi(theta) = (-1)^k cos(m theta) - 2k`` on ``[k pi/m, (k+1) pi/m]`` (eq. 6) and
    ``cos(m theta)`` from the multiple-angle expansion of ``cos(theta)`` (eq. 7; computed here
    with the equivalent Chebyshev recurrence, so no ``acos``). Weights and embeddings are
    not normalised; there is no bias.

    Training uses the authors' annealing (their Caffe ``LargeMarginInnerProduct`` layer):
    ``f_y = (lambda |W_y||x| cos(theta_y) + |W_y||x| psi(theta_y)) / (1 + lambda)`` with
    ``lambda = max(lambda_min, base * (1 + gamma * step) ** (-power))``, set by
    :meth:`update_schedule` (called by the trainer; ``base=0`` turns it off).

    Defaults: ``margin=4, base=1000, gamma=2.5e-5, power=35, lambda_min=0``, the values of the
    authors' README and MNIST prototxt (wy1iu/LargeMargin_Softmax_Loss). Their CIFAR-10
    prototxt uses ``margin=2, base=1000, gamma=2e-5, power=45, lambda_min=0`` (CIFAR-10+:
    ``gamma=1e-5``); their README suggests ``lambda_min`` of 5 or 10 for harder data sets.

    Terms: ``{"lsoftmax": ...}``; ``weights = {"lsoftmax": weight}``. ``logits(embedding)``
    is the plain ``x W^T`` (the authors' test-phase layer). Gradients are autograd's exact
    gradients of this function (the Caffe layer writes its derivatives out by hand).
    """

    term = "lsoftmax"
    #: What ``chanloss tune`` varies (see chanloss.losses.search).
    search_space = {"margin": IntRange(1, 4), "lambda_min": Uniform(0.0, 10.0)}
    normalize_weight = False

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_dim: int,
        margin: int = 4,
        base: float = 1000.0,
        gamma: float = 2.5e-5,
        power: float = 35.0,
        lambda_min: float = 0.0,
        weight: float = 1.0,
        check_finite: bool = False,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            embedding_dim=embedding_dim,
            margin=margin,
            base=base,
            gamma=gamma,
            power=power,
            lambda_min=lambda_min,
            weight=weight,
            check_finite=check_finite,
        )
