"""The common loss API (docs/design.md): registry, combine, validation, precision."""

import pytest
import torch
import torch.nn.functional as F

from chanloss.losses import LOSSES, CrossEntropyLoss, create_loss


def test_cross_entropy_matches_per_sample_reference():
    torch.manual_seed(0)
    logits = torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    ref = sum(-torch.log_softmax(logits[i], 0)[labels[i]] for i in range(6)) / 6
    loss = CrossEntropyLoss(weight=0.5)
    assert loss.terms(logits, labels)["ce"].item() == pytest.approx(ref.item(), rel=1e-12)
    assert loss(logits, labels).item() == pytest.approx(0.5 * ref.item(), rel=1e-12)


def test_half_inputs_are_computed_in_float32_even_under_autocast():
    logits = torch.randn(8, 4)
    labels = torch.arange(8) % 4
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = CrossEntropyLoss()(logits.to(dtype), labels)
        assert out.dtype == torch.float32
        expected = F.cross_entropy(logits.to(dtype).float(), labels)
        assert out.item() == pytest.approx(expected.item(), rel=1e-6)


def test_create_loss_passes_only_accepted_context_and_rejects_unknown_params():
    loss = create_loss("ce", context={"num_classes": 10, "num_channels": 64}, weight=2.0)
    assert isinstance(loss, CrossEntropyLoss) and loss.weights == {"ce": 2.0}
    with pytest.raises(ValueError, match="unknown loss 'nope'; expected one of"):
        create_loss("nope")
    with pytest.raises(ValueError, match="has no parameter 'gamma'"):
        create_loss("ce", gamma=2.0)
    assert LOSSES["ce"] is CrossEntropyLoss


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (
            torch.randn(4),
            torch.zeros(4, dtype=torch.long),
            r"logits must have 2 dimensions \(B, K\)",
        ),
        (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), "empty batch"),
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, dtype=torch.long), "floating-point"),
        (torch.randn(2, 3), torch.zeros(2), "integer tensor"),
        (torch.randn(2, 3), torch.zeros(3, dtype=torch.long), r"shape \(2,\)"),
        (torch.randn(2, 3), torch.tensor([0, 3]), r"labels must be in \[0, 3\), got a label 3"),
        (torch.randn(2, 3), torch.tensor([-1, 0]), "got a label -1"),
        ([[0.0, 1.0]], torch.zeros(1, dtype=torch.long), "must be a torch.Tensor"),
    ],
)
def test_bad_input_names_what_was_expected(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        CrossEntropyLoss()(logits, labels)


def test_check_finite_rejects_nan_and_bad_constructor_arguments():
    x = torch.randn(2, 3)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="logits must be finite: found 1 NaN/inf"):
        CrossEntropyLoss(check_finite=True)(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="weight must be a real number"):
        CrossEntropyLoss(weight="a")
    with pytest.raises(ValueError, match="weight must be a finite number"):
        CrossEntropyLoss(weight=float("inf"))
    with pytest.raises(TypeError):
        CrossEntropyLoss(1.0)  # keyword-only


def test_combine_rejects_a_term_without_weight():
    with pytest.raises(ValueError, match=r"no weight for the terms \['x'\]"):
        CrossEntropyLoss().combine({"x": torch.tensor(1.0)})


def test_logits_is_only_for_losses_that_produce_class_scores():
    with pytest.raises(NotImplementedError, match="CrossEntropyLoss produces no class scores"):
        CrossEntropyLoss().logits(torch.randn(2, 3))
    arcface = create_loss("arcface", context={"num_classes": 4, "embedding_dim": 3})
    with pytest.raises(ValueError, match=r"embedding must have size 3 in dimension 1 of \(B, D\)"):
        arcface.logits(torch.randn(2, 5))
    assert arcface.logits(torch.randn(2, 3, dtype=torch.bfloat16)).dtype == torch.float32
