"""MultipleLosses: the one class that combines the configured losses into the objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chanloss.core.errors import LossInputError
from chanloss.losses import ArcFaceLoss, CenterLoss, CrossEntropyLoss, Loss
from chanloss.losses.objective import MultipleLosses, backward_scale
from chanloss.models.base import ModelOutput

K, D, B = 4, 3, 6


class Gathering(Loss):
    """A logits loss with two terms that says it gathers across ranks and records its kwargs."""

    gathers_across_ranks = True

    def __init__(self) -> None:
        super().__init__(weights={"square": 0.5, "abs": 2.0})
        self.kwargs: list[dict] = []

    def compute_terms(self, inputs, labels, **kwargs):
        self.kwargs.append(kwargs)
        return {"square": inputs.pow(2).mean(), "abs": inputs.abs().mean()}


def output(seed: int = 0, dtype=torch.float64) -> ModelOutput:
    gen = torch.Generator().manual_seed(seed)
    return ModelOutput(
        logits=torch.randn(B, K, generator=gen, dtype=dtype, requires_grad=True),
        features=torch.randn(B, 5, 2, 2, generator=gen, dtype=dtype),
        embedding=torch.randn(B, D, generator=gen, dtype=dtype, requires_grad=True),
    )


def labels() -> torch.Tensor:
    return torch.tensor([0, 1, 2, 3, 1, 0])


def test_the_objective_is_the_weighted_sum_of_a_plain_per_sample_reference():
    out, y = output(), labels()
    center = CenterLoss(num_classes=K, embedding_dim=D, weight=0.3).double()
    losses = MultipleLosses(
        [CrossEntropyLoss(weight=1.5), center, Gathering()],
        [2.0, 0.5, 0.25],
        names=["ce", "center", "g"],
        logged=[["ce"], ["center"], ["abs"]],
        world_size=3,
    )
    ce = sum(-torch.log_softmax(out.logits[i], 0)[y[i]] for i in range(B)) / B
    dist = sum(((out.embedding[i] - center.centers[y[i]]) ** 2).sum() for i in range(B)) / B
    square = sum((out.logits[i] ** 2).sum() for i in range(B)) / (B * K)
    absolute = sum(out.logits[i].abs().sum() for i in range(B)) / (B * K)
    terms = losses.terms(out, y)
    # the centre term of CenterLoss is half the squared distance (Wen et al. 2016, eq. 2)
    center_term = terms[1]["center"]
    assert center_term.item() == pytest.approx(0.5 * dist.item(), rel=1e-12)
    combined = losses.combine(terms)
    g = 0.5 * square + 2.0 * absolute
    expected = 2.0 * 1.5 * ce + 0.5 * 0.3 * center_term + 0.25 * g
    assert combined.objective.item() == pytest.approx(expected.item(), rel=1e-12)
    # the gathering loss enters what is back-propagated x world size, the rest as it is
    backward = 2.0 * 1.5 * ce + 0.5 * 0.3 * center_term + 3 * 0.25 * g
    assert combined.to_backward.item() == pytest.approx(backward.item(), rel=1e-12)
    assert losses.scales == [1, 1, 3]
    assert [v.item() for v in combined.logged] == pytest.approx(
        [ce.item(), center_term.item(), absolute.item()],
        rel=1e-6,  # logged in float32
    )
    assert all(v.dtype == torch.float32 and not v.requires_grad for v in combined.logged)
    assert losses(out, y).item() == combined.objective.item()


def test_defaults_unit_weights_every_term_logged_and_modulelist_access():
    ce, g = CrossEntropyLoss(), Gathering()
    losses = MultipleLosses([ce, g])
    assert losses.weights == [1.0, 1.0]
    assert losses.names == ["CrossEntropyLoss", "Gathering"]
    assert losses.logged == [["ce"], ["square", "abs"]]
    assert losses.scales == [1, 1] and losses.takes_generator == [False, False]
    assert len(losses) == 2 and list(losses) == [ce, g] and losses[1] is g
    assert len(losses.combine(losses.terms(output(), labels())).logged) == 3
    assert backward_scale(g, 4) == 4 and backward_scale(ce, 4) == 1


def test_the_generator_goes_only_to_the_losses_that_take_one():
    first, second = Gathering(), Gathering()
    losses = MultipleLosses([first, second], takes_generator=[False, True])
    gen = torch.Generator()
    losses.terms(output(), labels(), gen)
    assert first.kwargs == [{}] and second.kwargs == [{"generator": gen}]


def test_gradients_of_the_objective_pass_gradcheck():
    center = CenterLoss(num_classes=K, embedding_dim=D).double()
    losses = MultipleLosses([CrossEntropyLoss(), center, Gathering()], [1.0, 0.7, 0.2])
    out, y = output(1), labels()

    def objective(logits, embedding):
        return losses(ModelOutput(logits, out.features, embedding), y)

    assert torch.autograd.gradcheck(objective, (out.logits, out.embedding))


def test_class_scores_come_from_a_margin_head_else_from_the_model():
    out = output(2, dtype=torch.float32)
    plain = MultipleLosses([CrossEntropyLoss()])
    assert plain.head is None and plain.class_scores(out) is out.logits
    head = ArcFaceLoss(num_classes=K, embedding_dim=D)
    margin = MultipleLosses([CrossEntropyLoss(), head])
    assert margin.head is head
    expected = F.normalize(out.embedding) @ F.normalize(head.weight).t()
    scores = margin.class_scores(out)
    assert scores.shape == (B, K)
    assert torch.allclose(scores / scores.norm(dim=1, keepdim=True), F.normalize(expected))


def test_update_hooks_reach_every_loss():
    calls = []

    class Hooked(Gathering):
        def update_schedule(self, step):
            calls.append(("schedule", step))

        def update_state(self, inputs, labels):
            calls.append(("state", inputs.requires_grad, tuple(inputs.shape)))

    losses = MultipleLosses([Hooked(), CrossEntropyLoss(), Hooked()])
    losses.update_schedule(7)
    losses.update_state(output(), labels())
    assert calls == [("schedule", 7), ("schedule", 7)] + [("state", False, (B, K))] * 2


def test_a_loss_refusing_its_input_is_named_by_its_index():
    losses = MultipleLosses([CrossEntropyLoss(), CrossEntropyLoss(check_finite=True)])
    out = output()
    bad = ModelOutput(out.logits.detach().clone(), out.features, out.embedding)
    bad.logits[0, 0] = float("nan")
    with pytest.raises(LossInputError) as info:
        losses.terms(bad, labels())
    assert info.value.index == 1


def test_bad_arguments_say_what_was_expected():
    ce = CrossEntropyLoss()
    with pytest.raises(ValueError, match="needs at least one loss"):
        MultipleLosses([])
    with pytest.raises(ValueError, match="2 losses but 1 weights; expected one each"):
        MultipleLosses([ce, Gathering()], [1.0])
    with pytest.raises(ValueError, match="1 losses but 2 names"):
        MultipleLosses([ce], names=["a", "b"])
    with pytest.raises(ValueError, match="1 losses but 0 logged"):
        MultipleLosses([ce], logged=[])
    with pytest.raises(ValueError, match="1 losses but 2 takes_generator"):
        MultipleLosses([ce], takes_generator=[True, False])
    with pytest.raises(ValueError, match="world_size must be at least 1, got 0"):
        MultipleLosses([ce], world_size=0)
    with pytest.raises(ValueError, match="1 sets of terms for 2 losses"):
        MultipleLosses([ce, Gathering()]).combine([{"ce": torch.tensor(1.0)}])
