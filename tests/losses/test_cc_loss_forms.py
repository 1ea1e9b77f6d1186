"""CC-Loss's bounded forms (margin, softplus, cosine) and the attention's hidden-width floor:
per-pair references, gradcheck, bounded gradients as the features shrink, errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from chanloss.losses import CCLoss

C = 8


def make(form, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("reduction", 2)
    return CCLoss(placement="branch", num_channels=C, form=form, **kwargs).double()


def batch(labels, seed=0, scale=1.0, hw=(3, 2)):
    gen = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(len(labels), C, *hw, generator=gen, dtype=torch.float64)
    return x.requires_grad_(), torch.tensor(labels)


def reference(loss, x, y):
    """Per-pair double loop with the loss's own SE layers (the class docstring, item 4)."""
    a = torch.sigmoid(loss.fc2(torch.relu(loss.fc1(x.mean(dim=(2, 3))))))
    intra, inter, n_pos, n_neg = 0.0, 0.0, 0, 0
    for i in range(len(y)):
        for j in range(len(y)):
            if i == j:
                continue
            if loss.form == "cosine":
                u, v = a[i] / a[i].norm(), a[j] / a[j].norm()
                d = ((u - v) ** 2).sum()
            else:
                d = ((a[i] - a[j]) ** 2).sum() / C
            if y[i] == y[j]:
                intra, n_pos = intra + d, n_pos + 1
            else:
                inter, n_neg = inter + d, n_neg + 1
    gap = intra / max(n_pos, 1) - inter / max(n_neg, 1)
    if loss.form == "cosine":
        return gap
    if loss.form == "margin":
        return torch.relu(gap + loss.margin)
    t = loss.temperature
    return t * torch.log1p(torch.exp(gap / t))


@pytest.mark.parametrize("form", ["margin", "softplus", "cosine"])
@pytest.mark.parametrize(
    "labels",
    [[0, 1, 0, 2, 1, 1, 3], [0, 1, 2, 3], [1, 1, 1]],
    ids=["mixed", "no-positive-pairs", "no-negative-pairs"],
)
def test_forms_match_a_per_pair_reference(form, labels):
    loss = make(form, margin=0.3 if form == "margin" else 0.1, temperature=0.05)
    x, y = batch(labels)
    got = loss.terms(x, y)["cc"]
    want = reference(loss, x, y)
    assert got.item() == pytest.approx(float(want.detach()), rel=1e-9, abs=1e-12)
    g_got = torch.autograd.grad(got, [x, *loss.parameters()])
    g_want = torch.autograd.grad(want, [x, *loss.parameters()])
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("form", ["margin", "softplus", "cosine"])
def test_forms_gradcheck_features_and_se_parameters(form):
    loss = make(form, margin=0.5, reduction=2)
    x, y = batch([0, 1, 0, 1, 2], hw=(1, 1))
    params = dict(loss.named_parameters())

    def f(inp, *ps):
        state = dict(zip(params, ps, strict=True))
        return torch.func.functional_call(loss, state, (inp, y))

    ps = [p.detach().clone().requires_grad_() for p in params.values()]
    assert torch.autograd.gradcheck(f, (x, *ps))


def _grad_norm(loss, scale):
    x, y = batch([0, 1, 2, 3] * 4, seed=3, scale=scale)
    (g,) = torch.autograd.grad(loss(x, y), x)
    return g.norm().item()


def test_bounded_forms_gradients_shrink_while_the_ratio_grows_as_features_shrink():
    scales = (1.0, 0.1, 0.01)
    ratio = [_grad_norm(make("ratio", reduction=1, eps=1e-12), s) for s in scales]
    assert ratio[2] > 20 * ratio[0]  # the ratio's gradient grows like 1 / scale
    for form in ("margin", "softplus", "cosine"):
        norms = [_grad_norm(make(form, margin=1.0, reduction=1), s) for s in scales]
        assert all(math.isfinite(n) for n in norms)
        assert norms[1] <= norms[0] and norms[2] <= norms[1], (form, norms)


def test_margin_hinge_switches_off_once_classes_are_apart():
    x = torch.zeros(4, C, 1, 1, dtype=torch.float64)
    x[1, :, 0, 0] = x[3, :, 0, 0] = 2.0  # class 1's samples differ from class 0's, not each other
    x.requires_grad_(True)
    y = torch.tensor([0, 1, 0, 1])
    for margin, active in ((0.0, False), (10.0, True)):
        loss = make("margin", margin=margin, reduction=1)
        with torch.no_grad():  # attention a = sigmoid(z): the identity through the SE layers
            for fc in (loss.fc1, loss.fc2):
                fc.weight.copy_(torch.eye(C, dtype=torch.float64))
                fc.bias.zero_()
        value = loss.terms(x, y)["cc"]
        (g,) = torch.autograd.grad(value, x)
        assert (value.item() > 0) == active and (g.abs().max().item() > 0) == active


def test_hidden_width_floor_raises_the_bottleneck_with_a_warning():
    with pytest.warns(UserWarning, match=r"30 // 16 = 1 is below min_hidden=8; using 8"):
        loss = CCLoss(placement="branch", num_channels=30, reduction=16, min_hidden=8)
    assert loss.hidden == 8 and loss.fc1.out_features == 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CCLoss(placement="branch", num_channels=30, reduction=16, min_hidden=1).hidden == 1
        assert CCLoss(placement="branch", num_channels=30, reduction=4, min_hidden=4).hidden == 7
        assert CCLoss(placement="branch", num_channels=512, reduction=16, min_hidden=8).hidden == 32
    with pytest.warns(UserWarning, match="using 3"):  # never wider than the channels
        assert CCLoss(placement="branch", num_channels=3, reduction=16, min_hidden=8).hidden == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"form": "log"}, "form must be one of 'ratio', 'margin', 'cosine', 'softplus', got 'log'"),
        (
            {"form": "margin", "pair_reduction": "sum"},
            "pair_reduction='sum' is only for form='ratio'",
        ),
        ({"margin": -0.1}, r"margin must be a finite number in \[0, inf\), got -0.1"),
        ({"temperature": 0.0}, r"temperature must be a finite number in \(0, inf\), got 0.0"),
        ({"min_hidden": 0}, r"min_hidden must be in \[1, inf\), got 0"),
    ],
)
def test_bad_form_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CCLoss(placement="branch", num_channels=C, **kwargs)
