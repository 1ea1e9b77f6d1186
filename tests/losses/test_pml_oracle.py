"""Margin heads against pytorch-metric-learning (an independent implementation).

pml's conventions and how they are matched here:
- pml's class weights ``W`` have shape ``(embedding_size, num_classes)``; ours (like
  ``nn.Linear``) ``(num_classes, embedding_dim)``: copied across transposed.
- ``ArcFaceLoss``: pml's ``margin`` is in degrees (default 28.6 ~ 0.5 rad), ours in radians;
  pml applies the same ``cos(theta) - m sin(m)`` fallback past ``theta = pi - m``.
- ``LargeMarginSoftmaxLoss`` and ``SphereFaceLoss``: pml has no lambda annealing, so ours is
  compared with ``lambda = 0`` (``base=0, lambda_min=0``); pml's extra ``scale`` multiplies
  all scores and is left at 1 (the papers have no such factor). pml's SphereFace keeps
  ``|x|`` and uses ``cos(theta)`` with normalised weights, as the paper and ours do.
- ``NormalizedSoftmaxLoss`` (NormFace, temperature ``T``) is CosFace/ArcFace with
  ``margin = 0`` and ``scale = 1/T``.
pml reduces by the mean over the batch, as we do.
"""

import math

import pytest
import torch

pml_losses = pytest.importorskip(
    "pytorch_metric_learning.losses",
    reason="pytorch-metric-learning (a dev dependency) is needed for the oracle comparison",
)

from chanloss.losses import ArcFaceLoss, CosFaceLoss, LSoftmaxLoss, SphereFaceLoss  # noqa: E402

# pml's own NumPy 2 deprecation warning (scipy.special.binom on tensors), not ours
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pytorch_metric_learning")

K, D, B = 7, 6, 16


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, K, (B,), generator=g)
    labels[-1] = K - 1
    return x, labels


def _compare(ours, theirs, term):
    ours = ours.double()
    theirs = theirs.double()
    with torch.no_grad():
        theirs.W.copy_(ours.weight.detach().t())
    x, labels = _data()
    x_ours = x.clone().requires_grad_(True)
    x_theirs = x.clone().requires_grad_(True)
    value = ours.terms(x_ours, labels)[term]
    expected = theirs(x_theirs, labels)
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    value.backward()
    expected.backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(ours.weight.grad, theirs.W.grad.t(), rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(ours.logits(x), theirs.get_logits(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("margin", [0.2, 0.5, 1.2])
def test_arcface_matches_pml(margin):
    torch.manual_seed(1)
    ours = ArcFaceLoss(num_classes=K, embedding_dim=D, scale=30.0, margin=margin)
    theirs = pml_losses.ArcFaceLoss(
        num_classes=K, embedding_size=D, margin=math.degrees(margin), scale=30.0
    )
    _compare(ours, theirs, "arcface")


@pytest.mark.parametrize(("scale", "margin"), [(64.0, 0.35), (30.0, 0.35), (10.0, 0.0)])
def test_cosface_matches_pml(scale, margin):
    torch.manual_seed(2)
    ours = CosFaceLoss(num_classes=K, embedding_dim=D, scale=scale, margin=margin)
    theirs = pml_losses.CosFaceLoss(num_classes=K, embedding_size=D, margin=margin, scale=scale)
    _compare(ours, theirs, "cosface")


@pytest.mark.parametrize("margin", [1, 2, 3, 4])
def test_lsoftmax_without_annealing_matches_pml(margin):
    torch.manual_seed(3)
    ours = LSoftmaxLoss(num_classes=K, embedding_dim=D, margin=margin, base=0.0)
    theirs = pml_losses.LargeMarginSoftmaxLoss(
        num_classes=K, embedding_size=D, margin=margin, scale=1
    )
    _compare(ours, theirs, "lsoftmax")


@pytest.mark.parametrize("margin", [2, 4])
def test_sphereface_without_annealing_matches_pml(margin):
    torch.manual_seed(4)
    ours = SphereFaceLoss(num_classes=K, embedding_dim=D, margin=margin, base=0.0, lambda_min=0.0)
    theirs = pml_losses.SphereFaceLoss(num_classes=K, embedding_size=D, margin=margin, scale=1)
    _compare(ours, theirs, "sphereface")


@pytest.mark.parametrize("head", [CosFaceLoss, ArcFaceLoss])
def test_zero_margin_heads_match_pml_normalized_softmax(head):
    torch.manual_seed(5)
    temperature = 0.05
    ours = head(num_classes=K, embedding_dim=D, scale=1 / temperature, margin=0.0)
    theirs = pml_losses.NormalizedSoftmaxLoss(
        num_classes=K, embedding_size=D, temperature=temperature
    )
    _compare(ours, theirs, ours.term)
