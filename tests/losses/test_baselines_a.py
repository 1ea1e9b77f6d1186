"""Baseline losses, part A: label smoothing, focal, centre, L-Softmax, SphereFace, CosFace,
ArcFace. Every loss is compared with a plain per-sample reference written here (Python
``math`` per row, no vectorisation, ``acos`` for the angles)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from chanloss.losses import (
    LOSSES,
    ArcFaceLoss,
    CenterLoss,
    CosFaceLoss,
    FocalLoss,
    LabelSmoothingLoss,
    LSoftmaxLoss,
    SphereFaceLoss,
    create_loss,
)
from chanloss.losses._margin import multiplicative_psi

K, D, B = 6, 5, 7
LABELS = torch.tensor([0, 5, 2, 5, 1, 3, 4])  # the last class included, twice


# -- per-sample references -----------------------------------------------------------------
def _norm(v):
    return math.sqrt(sum(float(t) ** 2 for t in v))


def _dot(a, b):
    return sum(float(s) * float(t) for s, t in zip(a, b, strict=True))


def _psi(theta, m):
    k = min(int(math.floor(theta * m / math.pi)), m - 1)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def ref_row_scores(kind, x, W, y, p):
    """The scores of one sample (a list over classes), margin applied to class ``y``."""
    xn = _norm(x)
    scores = []
    for j in range(len(W)):
        wn = _norm(W[j])
        cos = max(-1.0, min(1.0, _dot(x, W[j]) / (xn * wn)))
        theta = math.acos(cos)
        if kind == "lsoftmax" or kind == "sphereface":
            r = xn * wn if kind == "lsoftmax" else xn
            if j == y:
                lam = p["lam"]
                scores.append((lam * r * cos + r * _psi(theta, p["m"])) / (1 + lam))
            else:
                scores.append(r * cos)
        elif kind == "cosface":
            scores.append(p["s"] * (cos - p["m"] if j == y else cos))
        elif kind == "arcface":
            m = p["m"]
            if j != y:
                value = cos
            elif p.get("easy", False):
                value = math.cos(theta + m) if cos > 0 else cos
            else:
                value = math.cos(theta + m) if theta + m < math.pi else cos - m * math.sin(m)
            scores.append(p["s"] * value)
        else:
            raise AssertionError(kind)
    return scores


def ref_row_ce(scores, y):
    top = max(scores)
    lse = top + math.log(sum(math.exp(s - top) for s in scores))
    return lse - scores[y]


def ref_margin_loss(kind, x, W, labels, p):
    x, W = x.double().tolist(), W.double().tolist()
    rows = [
        ref_row_ce(ref_row_scores(kind, x[i], W, int(labels[i]), p), int(labels[i]))
        for i in range(len(x))
    ]
    return sum(rows) / len(rows)


def ref_label_smoothing(logits, labels, eps):
    total = 0.0
    for row, y in zip(logits.double().tolist(), labels.tolist(), strict=True):
        k = len(row)
        log_p = [-ref_row_ce(row, j) for j in range(k)]
        total += -(1 - eps) * log_p[y] - eps / k * sum(log_p)
    return total / len(logits)


def ref_focal(logits, labels, gamma):
    total = 0.0
    for row, y in zip(logits.double().tolist(), labels.tolist(), strict=True):
        p_y = math.exp(-ref_row_ce(row, y))
        total += -((1 - p_y) ** gamma) * math.log(p_y)
    return total / len(logits)


def ref_center(x, centers, labels):
    total = 0.0
    for xi, y in zip(x.double().tolist(), labels.tolist(), strict=True):
        total += 0.5 * sum(
            (a - b) ** 2 for a, b in zip(xi, centers[y].double().tolist(), strict=True)
        )
    return total / len(x)


# -- the heads under test, with their reference parameters ---------------------------------
def _lsoftmax(m=4, step=None, **kw):
    loss = LSoftmaxLoss(num_classes=K, embedding_dim=D, margin=m, **kw)
    if step is not None:
        loss.update_schedule(step)
    return loss, "lsoftmax", {"m": m, "lam": loss.lam}


def _sphereface(m=4, step=None, **kw):
    loss = SphereFaceLoss(num_classes=K, embedding_dim=D, margin=m, **kw)
    if step is not None:
        loss.update_schedule(step)
    return loss, "sphereface", {"m": m, "lam": loss.lam}


def _cosface(s=64.0, m=0.35):
    return (
        CosFaceLoss(num_classes=K, embedding_dim=D, scale=s, margin=m),
        "cosface",
        {"s": s, "m": m},
    )


def _arcface(s=64.0, m=0.5, easy=False):
    loss = ArcFaceLoss(num_classes=K, embedding_dim=D, scale=s, margin=m, easy_margin=easy)
    return loss, "arcface", {"s": s, "m": m, "easy": easy}


HEADS = {
    "lsoftmax_m4_annealed": lambda: _lsoftmax(4, step=8000),
    "lsoftmax_m2_no_lambda": lambda: _lsoftmax(2, base=0.0),
    "lsoftmax_m3_default_lambda": lambda: _lsoftmax(3),
    "sphereface_m4_lambda_min": lambda: _sphereface(4, base=0.0, lambda_min=0.0),
    "sphereface_m4_default": lambda: _sphereface(4, step=20),
    "sphereface_m1": lambda: _sphereface(1, base=0.0, lambda_min=0.0),
    "cosface": lambda: _cosface(),
    "cosface_am_softmax": lambda: _cosface(30.0, 0.35),
    "arcface": lambda: _arcface(),
    "arcface_large_margin": lambda: _arcface(8.0, 2.0),
    "arcface_easy": lambda: _arcface(16.0, 0.5, True),
}


def _data(dtype, seed=0, batch=B, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, D, generator=g, dtype=dtype) * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_margin_heads_match_per_sample_reference(name, dtype):
    torch.manual_seed(1)
    loss, kind, p = HEADS[name]()
    loss = loss.to(dtype)
    x = _data(dtype)
    ref = ref_margin_loss(kind, x, loss.weight.detach(), LABELS, p)
    got = loss.terms(x, LABELS)[kind]
    assert got.dtype == dtype and got.shape == ()
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    assert got.item() == pytest.approx(ref, rel=tol, abs=tol)
    assert loss(x, LABELS).item() == pytest.approx(loss.weights[kind] * got.item(), rel=1e-12)


def test_arcface_uses_both_branches_and_matches_reference_in_each():
    """Embeddings placed at chosen angles to their class weight: below and above pi - m."""
    torch.manual_seed(2)
    loss, kind, p = _arcface(s=10.0, m=0.5)
    loss = loss.double()
    w = F.normalize(loss.weight.detach(), dim=1)
    labels = torch.tensor([0, 1, 2, 3])
    thetas = [0.3, 1.5, math.pi - 0.6, math.pi - 0.3]  # the last one takes the fallback
    rows = []
    for y, theta in zip(labels.tolist(), thetas, strict=True):
        other = torch.randn(D, dtype=torch.float64)
        other = F.normalize(other - (other @ w[y]) * w[y], dim=0)
        rows.append(3.0 * (math.cos(theta) * w[y] + math.sin(theta) * other))
    x = torch.stack(rows)
    ref = ref_margin_loss(kind, x, loss.weight.detach(), labels, p)
    assert loss.terms(x, labels)["arcface"].item() == pytest.approx(ref, rel=1e-12)
    scores = loss.margin_logits(x, loss.weight, labels)
    assert scores[3, 3].item() == pytest.approx(10 * (math.cos(thetas[3]) - 0.5 * math.sin(0.5)))
    assert scores[0, 0].item() == pytest.approx(10 * math.cos(0.8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.7])
def test_label_smoothing_matches_per_sample_reference(smoothing, dtype):
    logits = _data(dtype, seed=3) @ torch.randn(D, K, dtype=dtype)
    got = LabelSmoothingLoss(smoothing=smoothing, weight=2.0).terms(logits, LABELS)[
        "label_smoothing"
    ]
    ref = ref_label_smoothing(logits, LABELS, smoothing)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert got.dtype == dtype and got.item() == pytest.approx(ref, rel=tol)
    expected = F.cross_entropy(logits, LABELS, label_smoothing=smoothing)
    assert got.item() == pytest.approx(expected.item(), rel=tol)
    assert LabelSmoothingLoss(smoothing=smoothing, weight=2.0)(
        logits, LABELS
    ).item() == pytest.approx(2 * ref, rel=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_focal_matches_per_sample_reference(gamma, dtype):
    logits = _data(dtype, seed=4) @ torch.randn(D, K, dtype=dtype)
    got = FocalLoss(gamma=gamma, num_classes=K).terms(logits, LABELS)["focal"]
    ref = ref_focal(logits, LABELS, gamma)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert got.dtype == dtype and got.item() == pytest.approx(ref, rel=tol)
    if gamma == 0.0:
        assert got.item() == pytest.approx(F.cross_entropy(logits, LABELS).item(), rel=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_center_loss_matches_per_sample_reference_and_its_gradient(dtype):
    torch.manual_seed(5)
    loss = CenterLoss(num_classes=K, embedding_dim=D, center_update="sgd").to(dtype)
    assert loss.weights == {"center": 0.003}
    x = _data(dtype, seed=5)
    got = loss.terms(x, LABELS)["center"]
    ref = ref_center(x, loss.centers.detach(), LABELS)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert got.dtype == dtype and got.item() == pytest.approx(ref, rel=tol)
    got.backward()
    # d/dc_j of mean_i 1/2 ||x_i - c_{y_i}||^2 = sum_{i: y_i = j} (c_j - x_i) / B
    expected = torch.zeros(K, D, dtype=dtype)
    for i, y in enumerate(LABELS.tolist()):
        expected[y] += (loss.centers.detach()[y] - x[i]) / B
    torch.testing.assert_close(loss.centers.grad, expected)
    assert "centers" in loss.state_dict() and loss.centers.shape == (K, D)


# -- gradients -----------------------------------------------------------------------------
def _gradcheck_module(loss, x, labels):
    params = {name: p.detach().clone().requires_grad_(True) for name, p in loss.named_parameters()}
    names = list(params)

    def f(inp, *ps):
        return functional_call(loss, dict(zip(names, ps, strict=True)), (inp, labels))

    x = x.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x, *params.values()), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_margin_heads_gradcheck_float64(name):
    torch.manual_seed(6)
    loss, _, _ = HEADS[name]()
    loss = loss.double()
    _gradcheck_module(loss, _data(torch.float64, seed=6, batch=4, scale=1.5), LABELS[:4])


def test_center_label_smoothing_focal_gradcheck_float64():
    torch.manual_seed(7)
    _gradcheck_module(
        CenterLoss(num_classes=K, embedding_dim=D, weight=1.0, center_update="sgd").double(),
        _data(torch.float64),
        LABELS,
    )
    logits = _data(torch.float64, seed=7) @ torch.randn(D, K, dtype=torch.float64)
    _gradcheck_module(LabelSmoothingLoss(smoothing=0.2), logits, LABELS)
    for gamma in (0.5, 2.0):
        _gradcheck_module(FocalLoss(gamma=gamma), logits, LABELS)


# -- margin edge cases ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["parallel", "antiparallel"])
def test_theta_at_zero_and_pi_gives_finite_values_and_gradients(name, direction):
    torch.manual_seed(8)
    loss, kind, p = HEADS[name]()
    loss = loss.double()
    labels = torch.tensor([K - 1, 0, K - 1])
    w = loss.weight.detach()
    # exactly (anti)parallel, and 1e-7 rad away from it
    nudge = torch.randn(D, dtype=torch.float64) * 1e-7
    x = torch.stack(
        [direction * 3.0 * w[K - 1], direction * 0.5 * w[0], direction * 3.0 * w[K - 1] + nudge]
    )
    x.requires_grad_(True)
    out = loss(x, labels)
    out.backward()
    assert torch.isfinite(out)
    assert torch.isfinite(x.grad).all() and torch.isfinite(loss.weight.grad).all()
    ref = ref_margin_loss(kind, x.detach(), w, labels, p)
    assert out.item() == pytest.approx(loss.weights[kind] * ref, rel=1e-6, abs=1e-6)
    loss.float()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        loss.zero_grad()
        xh = x.detach().to(dtype).requires_grad_(True)
        out = loss(xh, labels)
        out.backward()
        assert out.dtype == torch.float32 and torch.isfinite(out)
        assert torch.isfinite(xh.grad).all() and torch.isfinite(loss.weight.grad).all()


def test_zero_embedding_and_zero_class_weight_give_finite_values_and_gradients():
    for name in sorted(HEADS):
        loss = HEADS[name]()[0].double()
        with torch.no_grad():
            loss.weight[0] = 0.0
        x = _data(torch.float64, seed=13, batch=3)
        x[1] = 0.0
        x.requires_grad_(True)
        out = loss(x, torch.tensor([0, 1, K - 1]))
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(x.grad).all(), name
        assert torch.isfinite(loss.weight.grad).all(), name


def test_arcface_gradient_near_theta_zero_is_the_true_one():
    """d cos(theta + m) / dx stays ~ sin(theta + m) / |x| as theta -> 0 (no lost gradient)."""
    loss = ArcFaceLoss(num_classes=2, embedding_dim=2, scale=1.0, margin=0.5).double()
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))
    for theta in (1e-3, 1e-6, 1e-9):
        x = torch.tensor(
            [[math.cos(theta), math.sin(theta)]], dtype=torch.float64, requires_grad=True
        )
        target = loss.margin_logits(x, loss.weight, torch.tensor([0]))[0, 0]
        (grad,) = torch.autograd.grad(target, x)
        # tangential derivative of cos(theta + m): -sin(theta + m) along (-sin, cos)
        tangent = torch.tensor([-math.sin(theta), math.cos(theta)], dtype=torch.float64)
        assert (grad[0] @ tangent).item() == pytest.approx(-math.sin(theta + 0.5), rel=1e-6)


def test_batch_of_one_with_the_last_class():
    torch.manual_seed(9)
    x = _data(torch.float64, seed=9, batch=1)
    labels = torch.tensor([K - 1])
    for name in sorted(HEADS):
        loss, kind, p = HEADS[name]()
        loss = loss.double()
        ref = ref_margin_loss(kind, x, loss.weight.detach(), labels, p)
        assert loss.terms(x, labels)[kind].item() == pytest.approx(ref, rel=1e-11), name
    logits = torch.randn(1, K, dtype=torch.float64)
    assert FocalLoss().terms(logits, labels)["focal"].item() == pytest.approx(
        ref_focal(logits, labels, 2.0)
    )
    assert LabelSmoothingLoss().terms(logits, labels)["label_smoothing"].item() == pytest.approx(
        ref_label_smoothing(logits, labels, 0.1)
    )
    center = CenterLoss(num_classes=K, embedding_dim=D).double()
    assert center.terms(x, labels)["center"].item() == pytest.approx(
        ref_center(x, center.centers.detach(), labels)
    )


def test_psi_matches_the_piecewise_definition_including_interval_ends():
    for m in range(1, 6):
        thetas = [j * math.pi / m for j in range(m + 1)] + [t * math.pi / 97 for t in range(98)]
        cos = torch.tensor([math.cos(t) for t in thetas], dtype=torch.float64)
        got = multiplicative_psi(cos, m)
        ref = torch.tensor([_psi(t, m) for t in thetas], dtype=torch.float64)
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-9)
        # psi decreases monotonically from 1 (theta = 0) to -2m + 1 (theta = pi)
        grid = torch.cos(torch.linspace(0, math.pi, 400, dtype=torch.float64))
        assert (multiplicative_psi(grid, m).diff() <= 1e-12).all()


# -- precision -----------------------------------------------------------------------------
def _all_losses():
    torch.manual_seed(10)
    return [
        LabelSmoothingLoss(),
        FocalLoss(),
        CenterLoss(num_classes=K, embedding_dim=D),
        *(HEADS[name]()[0] for name in sorted(HEADS)),
    ]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_float32_finite_values_and_gradients(dtype):
    for loss in _all_losses():
        inp = (
            _data(torch.float32, seed=11) if loss.consumes == "embedding" else torch.randn(B, K) * 3
        )
        ref = loss(inp.to(dtype).float(), LABELS)
        x = inp.to(dtype).requires_grad_(True)
        out = loss(x, LABELS)
        out.backward()
        assert out.dtype == torch.float32 and torch.isfinite(out), loss
        assert out.item() == pytest.approx(ref.item(), rel=1e-6), loss
        assert x.grad.dtype == dtype and torch.isfinite(x.grad).all(), loss
        assert all(torch.isfinite(q.grad).all() for q in loss.parameters()), loss


def test_under_bfloat16_autocast_the_loss_is_computed_in_float32():
    for loss in _all_losses():
        width = D if loss.consumes == "embedding" else K
        layer = torch.nn.Linear(4, width)
        inp = torch.randn(B, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_features = layer(inp)
            assert out_features.dtype == torch.bfloat16
            out = loss(out_features, LABELS)
        out.backward()
        assert out.dtype == torch.float32 and torch.isfinite(out), loss
        expected = loss(out_features.detach().float(), LABELS)
        assert out.item() == pytest.approx(expected.item(), rel=1e-6), loss
        assert torch.isfinite(layer.weight.grad).all(), loss
        if loss.provides_logits:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                scores = loss.logits(out_features)
            assert scores.dtype == torch.float32 and scores.shape == (B, K)


# -- logits(), schedule, registry ----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(HEADS))
def test_logits_have_shape_b_k_and_no_margin(name):
    torch.manual_seed(12)
    loss, kind, p = HEADS[name]()
    loss = loss.double()
    x = _data(torch.float64, seed=12)
    scores = loss.logits(x)
    assert scores.shape == (B, K) and scores.dtype == torch.float64
    no_margin = {"lsoftmax": {"m": 1, "lam": 0.0}, "sphereface": {"m": 1, "lam": 0.0}}.get(
        kind, {**p, "m": 0.0}
    )
    w = loss.weight.detach().tolist()
    for i in range(B):
        ref = ref_row_scores(kind, x[i].tolist(), w, 0, no_margin)
        torch.testing.assert_close(scores[i], torch.tensor(ref, dtype=torch.float64))
    margin = loss.margin_logits(x, loss.weight, LABELS)
    off_target = torch.ones(B, K, dtype=torch.bool)
    off_target[torch.arange(B), LABELS] = False
    torch.testing.assert_close(margin[off_target], scores[off_target])
    # the margin only ever lowers the true-class score (m = 1 SphereFace has no margin)
    assert (margin[~off_target] <= scores[~off_target] + 1e-12).all()
    if name != "sphereface_m1":
        assert (margin[~off_target] < scores[~off_target] - 1e-6).any()
    assert LOSSES[kind].provides_logits and loss.consumes == "embedding"


def test_update_schedule_sets_lambda_and_forward_does_not_change_it():
    loss = LSoftmaxLoss(num_classes=K, embedding_dim=D)
    assert loss.lam == 1000.0
    x = _data(torch.float32)
    before = loss(x, LABELS).item()
    loss(x, LABELS)
    assert loss.lam == 1000.0
    loss.update_schedule(10_000)
    assert loss.lam == pytest.approx(1000.0 * (1 + 2.5e-5 * 10_000) ** -35)
    assert loss(x, LABELS).item() != pytest.approx(before)
    ref = ref_margin_loss("lsoftmax", x, loss.weight.detach(), LABELS, {"m": 4, "lam": loss.lam})
    assert loss(x, LABELS).item() == pytest.approx(ref, rel=2e-5)
    sphere = SphereFaceLoss(num_classes=K, embedding_dim=D)
    sphere.update_schedule(10)
    assert sphere.lam == pytest.approx(1000.0 / (1 + 0.12 * 10))
    sphere.update_schedule(1_000_000)
    assert sphere.lam == 5.0  # lambda_min
    with pytest.raises(ValueError, match=r"step must be in \[0, inf\), got -1"):
        sphere.update_schedule(-1)


def test_registry_names_and_context():
    ctx = {"num_classes": K, "embedding_dim": D, "num_channels": 64}
    for name, cls in [
        ("label_smoothing", LabelSmoothingLoss),
        ("focal", FocalLoss),
        ("center", CenterLoss),
        ("lsoftmax", LSoftmaxLoss),
        ("sphereface", SphereFaceLoss),
        ("cosface", CosFaceLoss),
        ("arcface", ArcFaceLoss),
    ]:
        loss = create_loss(name, context=ctx)
        assert type(loss) is cls and LOSSES[name] is cls
        assert set(loss.weights) == {name}
    assert create_loss("arcface", context=ctx).weight.shape == (K, D)
    assert create_loss("focal", context=ctx).num_classes == K
    assert create_loss("cosface", context=ctx, weight=0.5).weights == {"cosface": 0.5}
