"""Baseline losses, part A (label smoothing, focal, centre, L-Softmax, SphereFace, CosFace,
ArcFace): bad constructor arguments and inputs are rejected with a message naming them."""

import pytest
import torch

from chanloss.losses import (
    ArcFaceLoss,
    CenterLoss,
    CosFaceLoss,
    FocalLoss,
    LabelSmoothingLoss,
    LSoftmaxLoss,
    SphereFaceLoss,
)

K, D, B = 6, 5, 7


# -- bad arguments and inputs --------------------------------------------------------------
KD = {"num_classes": K, "embedding_dim": D}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: CosFaceLoss(**KD, margin=-0.1),
            r"margin must be a finite number in \[0, inf\), got -0.1",
        ),
        (
            lambda: ArcFaceLoss(**KD, margin=-0.1),
            r"margin must be a finite number in \[0, 3.14159\)",
        ),
        (
            lambda: ArcFaceLoss(**KD, margin=4.0),
            r"margin must be a finite number in \[0, 3.14159\), got 4",
        ),
        (
            lambda: CosFaceLoss(**KD, scale=0.0),
            r"scale must be a finite number in \(0, inf\), got 0",
        ),
        (
            lambda: ArcFaceLoss(**KD, scale=-1.0),
            r"scale must be a finite number in \(0, inf\), got -1",
        ),
        (lambda: ArcFaceLoss(**KD, easy_margin="yes"), "easy_margin must be a bool"),
        (lambda: LSoftmaxLoss(**KD, margin=2.5), r"margin must be an integer, got 2.5 \(float\)"),
        (lambda: LSoftmaxLoss(**KD, margin=0), r"margin must be in \[1, inf\), got 0"),
        (lambda: LSoftmaxLoss(**KD, margin=-2), r"margin must be in \[1, inf\), got -2"),
        (lambda: SphereFaceLoss(**KD, margin=4.0), r"margin must be an integer, got 4.0"),
        (lambda: LSoftmaxLoss(**KD, base=-1.0), r"base must be a finite number in \[0, inf\)"),
        (lambda: LSoftmaxLoss(**KD, gamma=-1.0), r"gamma must be a finite number in \[0, inf\)"),
        (lambda: SphereFaceLoss(**KD, power=-1.0), r"power must be a finite number in \[0, inf\)"),
        (
            lambda: SphereFaceLoss(**KD, lambda_min=-5.0),
            r"lambda_min must be a finite number in \[0",
        ),
        (
            lambda: LabelSmoothingLoss(smoothing=1.0),
            r"smoothing must be a finite number in \[0, 1\), got 1",
        ),
        (
            lambda: LabelSmoothingLoss(smoothing=-0.1),
            r"smoothing must be a finite number in \[0, 1\)",
        ),
        (lambda: FocalLoss(gamma=-0.5), r"gamma must be a finite number in \[0, inf\), got -0.5"),
        (lambda: FocalLoss(num_classes=0), r"num_classes must be in \[1, inf\), got 0"),
        (
            lambda: CenterLoss(num_classes=K, embedding_dim=0),
            r"embedding_dim must be in \[1, inf\)",
        ),
        (lambda: CosFaceLoss(num_classes=2.0, embedding_dim=D), "num_classes must be an integer"),
        (lambda: CenterLoss(**KD, weight=float("nan")), "weight must be a finite number"),
        (lambda: ArcFaceLoss(**KD, weight="1"), "weight must be a real number"),
    ],
)
def test_bad_constructor_arguments_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: CenterLoss(**KD),
        lambda: LSoftmaxLoss(**KD),
        lambda: SphereFaceLoss(**KD),
        lambda: CosFaceLoss(**KD),
        lambda: ArcFaceLoss(**KD),
    ],
)
def test_bad_embeddings_and_labels_are_rejected(make):
    loss = make()
    good = torch.randn(3, D)
    with pytest.raises(
        ValueError,
        match=r"embedding must have size 5 in dimension 1 of \(B, D\), got shape \(3, 4\)",
    ):
        loss(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"embedding must have 2 dimensions \(B, D\)"):
        loss(torch.randn(3, D, 1), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 6\), got a label 6"):
        loss(good, torch.tensor([0, 6, 2]))
    with pytest.raises(ValueError, match="got a label -1"):
        loss(good, torch.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        loss(good, torch.tensor([0, 1]))
    bad = good.clone()
    bad[0, 0] = float("inf")
    loss.check_finite = True
    with pytest.raises(ValueError, match="embedding must be finite: found 1 NaN/inf"):
        loss(bad, torch.tensor([0, 1, 2]))
    if loss.provides_logits:
        with pytest.raises(ValueError, match="embedding must be finite"):
            loss.logits(bad)
        with pytest.raises(ValueError, match=r"embedding must have size 5 in dimension 1"):
            loss.logits(torch.randn(3, 7))


@pytest.mark.parametrize(
    "make", [lambda: LabelSmoothingLoss(num_classes=4), lambda: FocalLoss(num_classes=4)]
)
def test_logit_losses_check_num_classes_and_labels(make):
    loss = make()
    with pytest.raises(
        ValueError, match=r"logits must have size 4 in dimension 1 of \(B, K\), got shape \(2, 5\)"
    ):
        loss(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got a label 4"):
        loss(torch.randn(2, 4), torch.tensor([0, 4]))
    assert torch.isfinite(loss(torch.randn(2, 4), torch.tensor([0, 3])))
