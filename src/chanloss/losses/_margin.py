"""Shared machinery of the margin heads: L-Softmax, SphereFace, CosFace and ArcFace.

A margin head replaces the model's linear classifier: it owns ``weight`` with the shape of
``nn.Linear(embedding_dim, num_classes, bias=False).weight``, i.e. ``(K, D)``, turns ``(B, D)``
embeddings into class scores, changes the score of the true class during training (the
margin) and takes the softmax cross-entropy of the result. ``logits(embedding)`` gives the
scores without margin, for inference.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chanloss.core.validation import (
    check_float,
    check_int,
)
from chanloss.losses.base import Loss

# Added to norms before dividing by them (as F.normalize does) so a zero vector gives cos = 0.
NORM_EPS = 1e-12


class MarginHead(Loss):
    """Base class of the margin heads (not registered; see the subclasses).

    Subclasses set ``term`` (the name of their single term) and implement
    :meth:`plain_logits` (scores without margin) and :meth:`margin_logits` (scores with the
    true class's score changed). The loss is ``cross_entropy(margin_logits, labels)``, the
    mean over the batch.

    ``weight`` is initialised with ``nn.init.xavier_uniform_`` (the SphereFace and ArcFace
    reference code use Xavier; L-Softmax's Caffe examples use MSRA). Whatever dtype the
    parameter has, it is cast to the embedding's compute dtype (float32 for half inputs).
    """

    consumes = "embedding"
    provides_logits = True
    term: ClassVar[str] = "margin"

    def __init__(
        self, *, num_classes: int, embedding_dim: int, weight: float, check_finite: bool
    ) -> None:
        super().__init__(
            weights={self.term: check_float("weight", weight)}, check_finite=check_finite
        )
        self.num_classes = check_int("num_classes", num_classes, low=1)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, low=1)
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    # -- the API -----------------------------------------------------------------------------
    def compute_logits(self, x: Tensor) -> Tensor:
        """Class scores ``(B, K)`` without margin, for inference (float32 for half inputs)."""
        return self.plain_logits(x, self.weight.to(x.dtype))

    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        scores = self.margin_logits(inputs, self.weight.to(inputs.dtype), labels)
        return {self.term: F.cross_entropy(scores, labels)}

    # -- for subclasses ----------------------------------------------------------------------
    def plain_logits(self, x: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError

    def margin_logits(self, x: Tensor, w: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"{super().extra_repr()}"
        )


def unit(v: Tensor) -> Tensor:
    """Rows of ``v`` scaled to unit L2 norm (a zero row stays zero)."""
    return F.normalize(v, dim=1, eps=NORM_EPS)


def cosine(x_hat: Tensor, w_hat: Tensor) -> Tensor:
    """``cos(theta)`` ``(B, K)`` of unit embeddings ``(B, D)`` with unit class weights ``(K, D)``."""
    return F.linear(x_hat, w_hat).clamp(-1.0, 1.0)


def target_cos_sin(x_hat: Tensor, w_hat: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``cos(theta_y)`` and ``sin(theta_y)`` ``(B,)`` of unit embeddings with their class's
    unit weight.

    ``sin`` is the norm of the component of ``x_hat`` orthogonal to ``w_hat[y]`` rather than
    ``sqrt(1 - cos^2)``: it stays accurate for theta near 0 and pi, and its gradient stays
    finite there (``sqrt(1 - cos^2)`` has an infinite derivative at cos = +-1).
    """
    w_y = w_hat.index_select(0, labels)
    cos = (x_hat * w_y).sum(dim=1).clamp(-1.0, 1.0)
    sin = torch.linalg.vector_norm(x_hat - cos.unsqueeze(1) * w_y, dim=1).clamp(max=1.0)
    return cos, sin


def replace_target(scores: Tensor, labels: Tensor, target: Tensor) -> Tensor:
    """``scores`` with ``scores[i, labels[i]]`` replaced by ``target[i]`` (out of place)."""
    return scores.scatter(1, labels.unsqueeze(1), target.unsqueeze(1))


def multiplicative_psi(cos: Tensor, margin: int) -> Tensor:
    """``psi(theta) = (-1)^k cos(m theta) - 2k`` for theta in ``[k pi/m, (k+1) pi/m]``.

    Computed from ``cos(theta)`` without ``acos``: ``cos(m theta) = T_m(cos theta)`` with the
    Chebyshev recurrence ``T_{n+1} = 2 c T_n - T_{n-1}`` (a polynomial, so the value and
    gradient are finite for every ``cos`` in [-1, 1], the ends included), and
    ``k = #{j in 1..m-1 : cos(theta) <= cos(j pi/m)}``. ``psi`` is continuous with a
    continuous derivative across the interval ends, so how a value on an end is assigned does
    not matter. The loop runs over the margin's degree, not over classes or samples.
    """
    if margin == 1:
        return cos
    t_prev, t_cur = torch.ones_like(cos), cos
    for _ in range(margin - 1):
        t_prev, t_cur = t_cur, 2.0 * cos * t_cur - t_prev
    ends = torch.cos(
        torch.arange(1, margin, device=cos.device, dtype=cos.dtype) * (math.pi / margin)
    )
    k = (cos.detach().unsqueeze(-1) <= ends).sum(dim=-1).to(cos.dtype)
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * t_cur - 2.0 * k


class AnnealedMultiplicativeMargin(MarginHead):
    """Shared body of L-Softmax and SphereFace: integer angular margin ``m`` with ``psi`` and
    the authors' annealing of the true-class score

    ``f_y = (lambda * |W_y||x| cos(theta_y) + |W_y||x| psi(theta_y)) / (1 + lambda)``,
    ``lambda = max(lambda_min, base * (1 + gamma * step) ** (-power))``,

    set by :meth:`update_schedule` (the trainer calls it before every step; ``forward`` never
    changes it). Before the first call, ``lambda`` is the value at step 0. The authors' Caffe
    layers increment their iteration counter before computing ``lambda``, so their first step
    uses ``step = 1``; with the trainer's 0-based count ours is one step behind.
    Subclasses set ``normalize_weight`` (SphereFace: ``|W_j| = 1``).
    """

    normalize_weight: ClassVar[bool] = False

    def __init__(
        self,
        *,
        num_classes: int,
        embedding_dim: int,
        margin: int,
        base: float,
        gamma: float,
        power: float,
        lambda_min: float,
        weight: float,
        check_finite: bool,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            embedding_dim=embedding_dim,
            weight=weight,
            check_finite=check_finite,
        )
        self.margin = check_int("margin", margin, low=1)
        self.base = check_float("base", base, low=0.0)
        self.gamma = check_float("gamma", gamma, low=0.0)
        self.power = check_float("power", power, low=0.0)
        self.lambda_min = check_float("lambda_min", lambda_min, low=0.0)
        self.lam = self.schedule(0)

    def schedule(self, step: int) -> float:
        """``lambda`` at ``step``: ``max(lambda_min, base * (1 + gamma * step) ** (-power))``."""
        step = check_int("step", step, low=0)
        return max(self.lambda_min, self.base * (1.0 + self.gamma * step) ** (-self.power))

    def update_schedule(self, step: int) -> None:
        """Set ``lambda`` for the coming optimisation step (the only state of this loss)."""
        self.lam = self.schedule(step)

    def _weight(self, w: Tensor) -> Tensor:
        return unit(w) if self.normalize_weight else w

    def plain_logits(self, x: Tensor, w: Tensor) -> Tensor:
        return F.linear(x, self._weight(w))

    def margin_logits(self, x: Tensor, w: Tensor, labels: Tensor) -> Tensor:
        w = self._weight(w)
        scores = F.linear(x, w)
        plain_y = scores.gather(1, labels.unsqueeze(1)).squeeze(1)
        norm_product = torch.linalg.vector_norm(x, dim=1) * torch.linalg.vector_norm(
            w.index_select(0, labels), dim=1
        )
        cos_y = (plain_y / norm_product.clamp(min=NORM_EPS)).clamp(-1.0, 1.0)
        psi_y = norm_product * multiplicative_psi(cos_y, self.margin)
        target = (self.lam * plain_y + psi_y) / (1.0 + self.lam)
        return replace_target(scores, labels, target)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, margin={self.margin}, base={self.base:g}, "
            f"gamma={self.gamma:g}, power={self.power:g}, lambda_min={self.lambda_min:g}, "
            f"lambda={self.lam:g}"
        )
