"""A-Softmax (SphereFace), Liu et al., CVPR 2017."""

from __future__ import annotations

from chanloss.losses._margin import AnnealedMultiplicativeMargin
from chanloss.losses.registry import register_loss
from chanloss.losses.search import IntRange, LogUniform


@register_loss("sphereface")
class SphereFaceLoss(AnnealedMultiplicativeMargin):
    """A-Softmax: W. Liu, Y. Wen, Z. Yu, M. Li, B. Raj, L. Song, "SphereFace: Deep Hypersphere
    Embedding for Face Recognition", CVPR 2017 (arXiv 1704.08063).

    Paper, A-Softmax loss with ``psi`` (Sec. 3.2; eq. 7 of the arXiv version): class weights
    are normalised (``|W_j| = 1``, no bias), the embedding norm is kept, and the scores are
    ``f_j = |x| cos(theta_j)`` for ``j != y`` and ``f_y = |x| psi(theta_y)`` with the
    multiplicative angular margin ``psi(theta) = (-1)^k cos(m theta) - 2k`` on
    ``[k pi/m, (k+1) pi/m]``, ``m`` an integer (paper: ``m = 4``).

    Training uses the authors' annealing (their Caffe ``MarginInnerProduct`` layer):
    ``f_y = (lambda |x| cos(theta_y) + |x| psi(theta_y)) / (1 + lambda)`` with
    ``lambda = max(lambda_min, base * (1 + gamma * step) ** (-power))``, set by
    :meth:`update_schedule` (called by the trainer).

    Defaults: ``margin=4, base=1000, gamma=0.12, power=1, lambda_min=5``, the values of the
    authors' ``sphereface_model.prototxt`` (wy1iu/sphereface, SphereFace-20 on CASIA-WebFace).

    Differences from the Caffe layer (documented, deliberate): the layer renormalises its
    weight blob in place every forward pass and back-propagates a hand-made, rescaled
    gradient to the input; here ``W / |W|`` is part of the autograd graph and the gradients
    are exact.

    Terms: ``{"sphereface": ...}``; ``weights = {"sphereface": weight}``.
    ``logits(embedding)`` is ``|x| cos(theta_j)`` (= ``x (W/|W|)^T``), without margin.
    """

    term = "sphereface"
    #: What ``chanloss tune`` varies (see chanloss.losses.search).
    search_space = {"margin": IntRange(1, 4), "lambda_min": LogUniform(0.1, 100.0)}
    normalize_weight = True

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_dim: int,
        margin: int = 4,
        base: float = 1000.0,
        gamma: float = 0.12,
        power: float = 1.0,
        lambda_min: float = 5.0,
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
