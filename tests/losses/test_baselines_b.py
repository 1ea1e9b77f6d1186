"""L-GM, Competing Ratio Loss and EM-Softmax against plain per-sample references."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from chanloss.losses import (
    LOSSES,
    CompetingRatioLoss,
    EMSoftmaxLoss,
    LGMLoss,
    create_loss,
)

K, D = 5, 4
DTYPES = [torch.float32, torch.float64]


def _tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 0}


def _data(batch=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, D, generator=g, dtype=dtype)
    y = torch.randint(0, K, (batch,), generator=g)
    y[-1] = K - 1
    return x, y


def _randomise(loss, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loss.parameters():
            p.copy_(0.7 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return loss


# -- per-sample references (plain loops, as in the papers' formulas) ------------------------
def ref_lgm(x, y, mu, log_var, alpha):
    """Returns (cls, lkd, logits without margin), looping over samples and classes."""
    cls, lkd, rows = [], [], []
    for i in range(x.shape[0]):
        with_margin, plain = [], []
        for k in range(mu.shape[0]):
            var = torch.ones_like(mu[k]) if log_var is None else torch.exp(log_var[k])
            d = 0.5 * ((x[i] - mu[k]) ** 2 / var).sum()
            half_logdet = 0.5 * torch.log(var).sum()
            plain.append(-d - half_logdet)
            with_margin.append(-d * (1 + alpha if k == int(y[i]) else 1.0) - half_logdet)
        s = torch.stack(with_margin)
        cls.append(torch.logsumexp(s, 0) - s[y[i]])
        rows.append(torch.stack(plain))
        var_y = torch.ones_like(x[i]) if log_var is None else torch.exp(log_var[y[i]])
        lkd.append(0.5 * ((x[i] - mu[y[i]]) ** 2 / var_y).sum() + 0.5 * torch.log(var_y).sum())
    return torch.stack(cls).mean(), torch.stack(lkd).mean(), torch.stack(rows)


def ref_crl(z, y, alpha, beta, eps):
    """The authors' per-sample formula log((1 + alpha - p_y)^beta / p_y), p_y clamped."""
    out = []
    for i in range(z.shape[0]):
        p = torch.softmax(z[i], 0)[y[i]].clamp(eps, 1 - eps)
        out.append(torch.log((1 + alpha - p) ** beta / p))
    return torch.stack(out).mean()


def ref_em(x, y, w, margin):
    """Returns (cls, hsic, ensemble logits): loops over members, samples and member pairs."""
    num_v, k = w.shape[0], w.shape[1]
    cls = 0.0
    for v in range(num_v):
        per = []
        for i in range(x.shape[0]):
            f = w[v] @ x[i]
            f = torch.cat([f[: y[i]], f[y[i] : y[i] + 1] - margin, f[y[i] + 1 :]])
            per.append(torch.logsumexp(f, 0) - f[y[i]])
        cls = cls + torch.stack(per).mean()
    h = torch.eye(k, dtype=w.dtype) - torch.full((k, k), 1.0 / k, dtype=w.dtype)
    hsic = torch.zeros((), dtype=w.dtype)
    for u in range(num_v):
        for v in range(u + 1, num_v):
            gu, gv = w[u] @ w[u].T, w[v] @ w[v].T
            hsic = hsic + torch.trace(gu @ h @ gv @ h) / (k - 1) ** 2
    logits = torch.stack([sum(w[v] @ x[i] for v in range(num_v)) / num_v for i in range(len(x))])
    return cls, hsic, logits


# -- values against the references ----------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("covariance", ["identity", "diagonal"])
def test_lgm_matches_reference(dtype, covariance):
    loss = _randomise(
        LGMLoss(
            num_classes=K, embedding_dim=D, alpha=0.3, likelihood_weight=0.2, covariance=covariance
        )
    ).to(dtype)
    x, y = _data(dtype=dtype)
    cls, lkd, logits = ref_lgm(x, y, loss.weight, loss.log_var, 0.3)
    terms = loss.terms(x, y)
    assert set(terms) == {"cls", "lkd"} and loss.weights == {"cls": 1.0, "lkd": 0.2}
    torch.testing.assert_close(terms["cls"], cls, **_tol(dtype))
    torch.testing.assert_close(terms["lkd"], lkd, **_tol(dtype))
    torch.testing.assert_close(loss(x, y), cls + 0.2 * lkd, **_tol(dtype))
    torch.testing.assert_close(loss.logits(x), logits, **_tol(dtype))


def test_lgm_identity_regulariser_is_the_authors_l2_loss():
    loss = _randomise(LGMLoss(num_classes=K, embedding_dim=D)).double()
    x, y = _data()
    authors = 0.01 * ((x - loss.weight[y]) ** 2).sum() / 2 / len(x)  # lambda*l2_loss/N
    assert (loss.weights["lkd"] * loss.terms(x, y)["lkd"]).item() == pytest.approx(
        authors.item(), rel=1e-12
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("alpha", "beta", "eps"), [(0.0, 0.5, 1e-7), (1.0, 0.75, 0.0), (0.3, 1.0, 1e-3)]
)
def test_competing_ratio_matches_reference(dtype, alpha, beta, eps):
    g = torch.Generator().manual_seed(3)
    z = (3 * torch.randn(9, K, generator=g)).to(dtype)
    y = torch.randint(0, K, (9,), generator=g)
    y[0] = K - 1
    loss = CompetingRatioLoss(alpha=alpha, beta=beta, eps=eps, weight=2.0)
    ref = ref_crl(z, y, alpha, beta, eps)
    torch.testing.assert_close(loss.terms(z, y)["crl"], ref, **_tol(dtype))
    torch.testing.assert_close(loss(z, y), 2.0 * ref, **_tol(dtype))


def test_competing_ratio_special_cases():
    z, y = 4 * torch.randn(16, K, dtype=torch.float64), torch.arange(16) % K
    ce = F.cross_entropy(z, y)
    assert CompetingRatioLoss(beta=0.0, eps=0.0)(z, y).item() == pytest.approx(ce.item(), rel=1e-12)
    # alpha >= 1 keeps every sample's loss >= 0, even for confident correct predictions
    confident = torch.full((4, K), -30.0, dtype=torch.float64)
    confident[torch.arange(4), torch.arange(4)] = 30.0
    labels = torch.arange(4)
    assert CompetingRatioLoss(alpha=1.0, beta=0.5)(confident, labels).item() >= 0.0
    # alpha = 0: the clamp at 1 - eps bounds the loss below and stops the gradient
    confident.requires_grad_(True)
    out = CompetingRatioLoss(alpha=0.0, beta=0.5)(confident, labels)
    out.backward()
    bound = 0.5 * math.log(1e-7) - math.log1p(-1e-7)
    assert out.item() == pytest.approx(bound, rel=1e-9)
    assert torch.count_nonzero(confident.grad) == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_classifiers", [1, 3])
def test_em_softmax_matches_reference(dtype, num_classifiers):
    loss = _randomise(
        EMSoftmaxLoss(
            num_classes=K,
            embedding_dim=D,
            num_classifiers=num_classifiers,
            margin=0.8,
            hsic_weight=0.4,
        )
    ).to(dtype)
    x, y = _data(dtype=dtype)
    cls, hsic, logits = ref_em(x, y, loss.weight, 0.8)
    terms = loss.terms(x, y)
    assert set(terms) == {"cls", "hsic"} and loss.weights == {"cls": 1.0, "hsic": 0.4}
    torch.testing.assert_close(terms["cls"], cls, **_tol(dtype))
    torch.testing.assert_close(terms["hsic"], hsic, **_tol(dtype))
    torch.testing.assert_close(loss(x, y), cls + 0.4 * hsic, **_tol(dtype))
    torch.testing.assert_close(loss.logits(x), logits, **_tol(dtype))
    assert loss.weight.shape == (num_classifiers, K, D)


def test_em_softmax_hsic_properties():
    loss = _randomise(EMSoftmaxLoss(num_classes=K, embedding_dim=D, num_classifiers=2)).double()
    x, y = _data()
    before = loss.terms(x, y)["hsic"]
    with torch.no_grad():  # HSIC centres over classes: a shift shared by all classes is invisible
        loss.weight += torch.randn(2, 1, D, dtype=torch.float64)
    torch.testing.assert_close(loss.terms(x, y)["hsic"], before, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # identical members are dependent; class-wise uncorrelated ones are not
        loss.weight[1] = loss.weight[0]
    assert loss.terms(x, y)["hsic"].item() > 0.0
    with torch.no_grad():
        loss.weight.zero_()
        loss.weight[0, 0, 0], loss.weight[0, 1, 0] = 1.0, -1.0
        loss.weight[1, 2, 1], loss.weight[1, 3, 1] = 1.0, -1.0
    assert loss.terms(x, y)["hsic"].item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        loss.weight[1, 0, 2], loss.weight[1, 1, 2] = 2.0, -2.0
    assert loss.terms(x, y)["hsic"].item() == pytest.approx(16 / (K - 1) ** 2, rel=1e-12)


# -- logits(): shape, dtype, no margin ------------------------------------------------------
def test_logits_have_no_margin():
    x, y = _data()
    lgm = _randomise(LGMLoss(num_classes=K, embedding_dim=D, alpha=0.5)).double()
    no_margin = _randomise(LGMLoss(num_classes=K, embedding_dim=D, alpha=0.0)).double()
    logits = lgm.logits(x)
    assert logits.shape == (len(x), K) and logits.dtype == torch.float64
    torch.testing.assert_close(logits, no_margin.logits(x))
    torch.testing.assert_close(no_margin.terms(x, y)["cls"], F.cross_entropy(logits, y))
    assert lgm.terms(x, y)["cls"] > F.cross_entropy(logits, y)

    em = _randomise(EMSoftmaxLoss(num_classes=K, embedding_dim=D, num_classifiers=1, margin=2.0))
    em = em.double()
    logits = em.logits(x)
    assert logits.shape == (len(x), K)
    torch.testing.assert_close(logits, x @ em.weight[0].T)
    assert em.terms(x, y)["cls"] > F.cross_entropy(logits, y)
    em.margin = 0.0
    torch.testing.assert_close(em.terms(x, y)["cls"], F.cross_entropy(logits, y))


# -- gradients ------------------------------------------------------------------------------
def _gradcheck(loss, x, y):
    names = [n for n, _ in loss.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in loss.named_parameters()]

    def fn(inp, *ps):
        return functional_call(loss, dict(zip(names, ps, strict=True)), (inp, y))

    assert torch.autograd.gradcheck(fn, (x.detach().clone().requires_grad_(True), *params))


@pytest.mark.parametrize("covariance", ["identity", "diagonal"])
def test_lgm_gradcheck(covariance):
    loss = _randomise(
        LGMLoss(
            num_classes=K, embedding_dim=D, alpha=0.4, likelihood_weight=0.3, covariance=covariance
        )
    ).double()
    _gradcheck(loss, *_data(batch=5))


def test_competing_ratio_gradcheck():
    z, y = _data(batch=6)
    z = torch.cat([z, torch.randn(6, K - D, dtype=torch.float64)], dim=1)
    for alpha in (0.0, 0.5):
        _gradcheck(CompetingRatioLoss(alpha=alpha, beta=0.7), z, y)


def test_em_softmax_gradcheck():
    loss = _randomise(
        EMSoftmaxLoss(
            num_classes=K, embedding_dim=D, num_classifiers=3, margin=0.5, hsic_weight=0.7
        )
    ).double()
    _gradcheck(loss, *_data(batch=5))


# -- edge cases -----------------------------------------------------------------------------
def _all_losses():
    return [
        (LGMLoss(num_classes=K, embedding_dim=D, covariance="diagonal"), "embedding"),
        (EMSoftmaxLoss(num_classes=K, embedding_dim=D, num_classifiers=3), "embedding"),
        (CompetingRatioLoss(), "logits"),
    ]


def _input(kind, batch, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, D if kind == "embedding" else K, generator=g).to(dtype)


@pytest.mark.parametrize("index", range(3))
def test_batch_of_one_last_label_and_identical_rows(index):
    loss, kind = _all_losses()[index]
    loss = _randomise(loss).double()
    one = _input(kind, 1, torch.float64).requires_grad_(True)
    last = torch.tensor([K - 1])
    value = loss(one, last)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(one.grad).all()
    same = _input(kind, 1, torch.float64).expand(6, -1).clone().requires_grad_(True)
    labels = torch.tensor([0, K - 1, 0, 1, K - 1, 2])
    value = loss(same, labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(same.grad).all()
    # the loss of identical inputs is the mean of their per-sample losses
    per = torch.stack([loss(same[i : i + 1].detach(), labels[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(loss(same.detach(), labels), per.mean())


def test_lgm_embedding_on_its_mean_has_finite_gradient():
    loss = _randomise(LGMLoss(num_classes=K, embedding_dim=D)).double()
    y = torch.tensor([0, K - 1])
    x = loss.weight.detach()[y].clone().requires_grad_(True)
    terms = loss.terms(x, y)
    assert terms["lkd"].item() == 0.0
    (terms["cls"] + terms["lkd"]).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(loss.weight.grad).all()


def test_competing_ratio_extreme_and_equal_logits():
    loss = CompetingRatioLoss(alpha=0.5, beta=0.5)
    huge = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 3e3]], requires_grad=True)
    value = loss(huge, torch.tensor([1, 0]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(huge.grad).all()
    equal = torch.zeros(3, K, dtype=torch.float64)
    expected = -math.log(1 / K) + 0.5 * math.log(0.5 + 1 - 1 / K)
    assert loss(equal, torch.tensor([0, 2, K - 1])).item() == pytest.approx(expected, rel=1e-12)


# -- precision ------------------------------------------------------------------------------
@pytest.mark.parametrize("index", range(3))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("autocast", [False, True])
def test_half_inputs_give_finite_float32(index, dtype, autocast):
    loss, kind = _all_losses()[index]
    x = _input(kind, 8, dtype).requires_grad_(True)
    y = torch.arange(8) % K
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        value = loss(x, y)
        if kind == "embedding":
            logits = loss.logits(x)
            assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters())
    expected = loss(x.detach().float(), y)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


# -- construction and validation ------------------------------------------------------------
LGM = {"num_classes": K, "embedding_dim": D}
EM = {"num_classes": K, "embedding_dim": D}


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (LGMLoss, {**LGM, "num_classes": 0}, r"num_classes must be in \[1, inf\), got 0"),
        (LGMLoss, {**LGM, "num_classes": 2.0}, "num_classes must be an integer"),
        (LGMLoss, {**LGM, "embedding_dim": 0}, r"embedding_dim must be in \[1, inf\)"),
        (LGMLoss, {**LGM, "alpha": -0.1}, r"alpha must be a finite number in \[0, inf\)"),
        (LGMLoss, {**LGM, "alpha": "big"}, "alpha must be a real number"),
        (LGMLoss, {**LGM, "likelihood_weight": -1.0}, "likelihood_weight must be a finite"),
        (LGMLoss, {**LGM, "likelihood_weight": float("nan")}, "likelihood_weight must be a fin"),
        (LGMLoss, {**LGM, "covariance": "full"}, "covariance must be one of 'identity', 'diag"),
        (CompetingRatioLoss, {"alpha": -1.0}, r"alpha must be a finite number in \[0, inf\)"),
        (CompetingRatioLoss, {"beta": -0.5}, r"beta must be a finite number in \[0, inf\)"),
        (CompetingRatioLoss, {"beta": None}, "beta must be a real number"),
        (CompetingRatioLoss, {"eps": 0.5}, r"eps must be a finite number in \[0, 0.5\), got 0.5"),
        (CompetingRatioLoss, {"eps": -1e-3}, r"eps must be a finite number in \[0, 0.5\)"),
        (CompetingRatioLoss, {"weight": float("inf")}, "weight must be a finite number"),
        (EMSoftmaxLoss, {**EM, "num_classes": 1}, r"num_classes must be in \[2, inf\), got 1"),
        (EMSoftmaxLoss, {**EM, "embedding_dim": -3}, r"embedding_dim must be in \[1, inf\)"),
        (EMSoftmaxLoss, {**EM, "num_classifiers": 0}, r"num_classifiers must be in \[1, inf\)"),
        (EMSoftmaxLoss, {**EM, "num_classifiers": True}, "num_classifiers must be an integer"),
        (EMSoftmaxLoss, {**EM, "margin": -1.0}, r"margin must be a finite number in \[0, inf\)"),
        (EMSoftmaxLoss, {**EM, "hsic_weight": -0.1}, r"hsic_weight must be a finite number"),
        (EMSoftmaxLoss, {**EM, "hsic_weight": "0.1"}, "hsic_weight must be a real number"),
    ],
)
def test_bad_constructor_arguments_name_the_argument(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_constructors_are_keyword_only_and_registered():
    with pytest.raises(TypeError):
        LGMLoss(K, D)
    with pytest.raises(TypeError):
        CompetingRatioLoss(0.0)
    with pytest.raises(TypeError):
        EMSoftmaxLoss(K, D)
    context = {"num_classes": 10, "num_channels": 64, "embedding_dim": 32}
    lgm = create_loss("lgm", context=context, covariance="diagonal")
    assert isinstance(lgm, LGMLoss) and lgm.weight.shape == (10, 32)
    assert set(lgm.state_dict()) == {"weight", "log_var"}
    em = create_loss("em_softmax", context=context, num_classifiers=4)
    assert isinstance(em, EMSoftmaxLoss) and em.weight.shape == (4, 10, 32)
    crl = create_loss("competing_ratio", context=context, beta=0.25)
    assert isinstance(crl, CompetingRatioLoss) and crl.beta == 0.25
    assert LOSSES["lgm"] is LGMLoss and LOSSES["competing_ratio"] is CompetingRatioLoss
    assert LOSSES["em_softmax"] is EMSoftmaxLoss
    assert (LGMLoss.consumes, LGMLoss.provides_logits) == ("embedding", True)
    assert (EMSoftmaxLoss.consumes, EMSoftmaxLoss.provides_logits) == ("embedding", True)
    assert (CompetingRatioLoss.consumes, CompetingRatioLoss.provides_logits) == ("logits", False)


_nan = torch.randn(3, D)
_nan[1, 2] = float("nan")


BAD_EMBEDDINGS = [  # (embedding, message): also rejected by logits()
    (torch.randn(D), r"embedding must have 2 dimensions \(B, D\), got shape \(4,\)"),
    (torch.randn(3, D + 1), r"embedding must have size 4 in dimension 1 of \(B, D\)"),
    (torch.zeros(3, D, dtype=torch.long), "embedding must be a floating-point tensor"),
    (torch.randn(0, D), "embedding is an empty batch"),
    (_nan, "embedding must be finite: found 1 NaN/inf values of 12"),
]
BAD_LABELS = [
    (torch.tensor([0, 1, K]), rf"labels must be in \[0, {K}\), got a label {K}"),
    (torch.tensor([0.0, 1.0, 2.0]), "labels must be an integer tensor"),
    (torch.tensor([0, 1]), r"labels must have shape \(3,\) to match the batch"),
]


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize(("x", "message"), BAD_EMBEDDINGS)
def test_embedding_losses_reject_bad_embeddings(index, x, message):
    loss = _all_losses()[index][0]
    loss.check_finite = True
    labels = torch.zeros(x.shape[0] if x.dim() else 0, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        loss(x, labels)
    with pytest.raises(ValueError, match=message):
        loss.logits(x)


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize(("y", "message"), BAD_LABELS)
def test_embedding_losses_reject_bad_labels(index, y, message):
    with pytest.raises(ValueError, match=message):
        _all_losses()[index][0](torch.randn(3, D), y)


def test_bad_keyword_arguments_and_competing_ratio_inputs():
    for loss, kind in _all_losses():
        with pytest.raises(ValueError, match="takes no keyword arguments, got \\['mask'\\]"):
            loss(_input(kind, 2), torch.tensor([0, 1]), mask=None)
    crl = CompetingRatioLoss(check_finite=True)
    with pytest.raises(ValueError, match=r"K >= 2 classes .* got shape \(3, 1\)"):
        crl(torch.randn(3, 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits must have 2 dimensions \(B, K\)"):
        crl(torch.randn(3), torch.zeros(3, dtype=torch.long))
    bad = torch.randn(3, K)
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="logits must be finite: found 1 NaN/inf"):
        crl(bad, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=rf"labels must be in \[0, {K}\), got a label -1"):
        crl(torch.randn(3, K), torch.tensor([0, -1, 2]))


@pytest.mark.parametrize(
    ("k", "d", "v"),
    [(3, 8, 2), (5, 4, 2), (40, 6, 2), (6, 40, 3), (30, 4, 4)],
    ids=["gram", "cross-pairs", "many-classes", "wide", "four-members"],
)
def test_em_softmax_hsic_matches_reference_in_both_formulations(k, d, v):
    """The (V, K, K) Gram form and the (P, D, D) pair form (chosen by shape) give the reference
    HSIC and correct gradients."""
    loss = _randomise(EMSoftmaxLoss(num_classes=k, embedding_dim=d, num_classifiers=v)).double()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (4,), generator=g)
    _, hsic, _ = ref_em(x, y, loss.weight.detach(), loss.margin)
    torch.testing.assert_close(loss.terms(x, y)["hsic"], hsic, rtol=1e-10, atol=1e-12)
    assert hsic.item() > 0.0
    weight = loss.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: loss._hsic(w), (weight,))
