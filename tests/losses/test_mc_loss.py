"""MC-Loss (docs/design.md, "MC-Loss") against a per-group Python loop written here."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import chanloss.losses._mc_core as mc_module
from chanloss.losses import LOSSES, MCLoss, create_loss
from chanloss.losses._mc_core import _group_max, _MCCore, _Segment


def group_sizes(c, k):
    q, r = divmod(c, k)
    return [q] * (k - r) + [q + 1] * r


def reference_terms(x, y, mask, k, pool):
    """One group at a time: mask, CCMP/CCAP, GAP, cross-entropy; softmax, CCMP, sum, ratio."""
    b, c = x.shape[:2]
    m = torch.ones(b, c, dtype=x.dtype) if mask is None else mask.to(x.dtype).expand(b, c)
    scores, ratios, start = [], [], 0
    for size in group_sizes(c, k):
        chans = x[:, start : start + size]
        masked = chans * m[:, start : start + size, None, None]
        pooled = masked.max(dim=1).values if pool == "max" else masked.mean(dim=1)
        scores.append(pooled.mean(dim=(1, 2)))
        soft = torch.softmax(chans.flatten(2), dim=-1)
        ratios.append(soft.max(dim=1).values.sum(-1) / size)
        start += size
    dis = F.cross_entropy(torch.stack(scores, 1), y)
    div = 1.0 - torch.stack(ratios, 1).mean()
    return dis, div


def features(b, c, h=3, w=4, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=gen, dtype=dtype)


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize(("c", "k"), [(12, 4), (14, 4), (23, 5)])
@pytest.mark.parametrize("mask_kind", ["shared", "per_sample"])
def test_matches_per_group_reference_with_injected_mask(pool, c, k, mask_kind):
    b = 5
    x = features(b, c, seed=c + k).requires_grad_(True)
    y = torch.arange(b) % k
    gen = torch.Generator().manual_seed(1)
    shape = (c,) if mask_kind == "shared" else (b, c)
    mask = (torch.rand(shape, generator=gen) > 0.4).double()
    loss = MCLoss(num_classes=k, num_channels=c, alpha=1.3, beta=7.0, pool=pool)
    terms = loss.terms(x, y, mask=mask)
    dis, div = reference_terms(x, y, mask, k, pool)
    assert terms["dis"].item() == pytest.approx(dis.item(), rel=1e-12)
    assert terms["div"].item() == pytest.approx(div.item(), rel=1e-12)
    (got,) = torch.autograd.grad(loss(x, y, mask=mask), x)
    (want,) = torch.autograd.grad(1.3 * dis + 7.0 * div, x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_cpu_blocks_of_samples_give_the_same_result(monkeypatch, pool):
    b, c, k = 5, 23, 5
    x = features(b, c, seed=12).requires_grad_(True)
    y = torch.tensor([0, 4, 2, 2, 1])
    mask = (torch.rand(b, c, generator=torch.Generator().manual_seed(2)) > 0.3).double()
    loss = MCLoss(num_classes=k, num_channels=c, pool=pool)
    whole = loss.terms(x, y, mask=mask)
    (g_whole,) = torch.autograd.grad(loss.combine(whole), x)
    monkeypatch.setattr(mc_module, "_CPU_BLOCK_BYTES", 2 * c * 12 * 8)  # 2 samples a block
    assert len(mc_module._blocks(x.flatten(2))) == 3
    blocked = loss.terms(x, y, mask=mask)
    (g_blocked,) = torch.autograd.grad(loss.combine(blocked), x)
    for name in ("dis", "div"):
        assert blocked[name].item() == pytest.approx(whole[name].item(), rel=1e-12)
    torch.testing.assert_close(g_blocked, g_whole, rtol=1e-12, atol=1e-15)
    dis, div = reference_terms(x, y, mask, k, pool)
    assert blocked["dis"].item() == pytest.approx(dis.item(), rel=1e-12)


def test_no_grad_forward_gives_the_same_terms():
    x, y = features(3, 14, seed=13), torch.tensor([0, 1, 3])
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0] * 3 + [1.0, 0.0])
    loss = MCLoss(num_classes=4, num_channels=14)
    with torch.no_grad():
        a = loss.terms(x, y, mask=mask)
    b = loss.terms(x.clone().requires_grad_(True), y, mask=mask)
    assert a["dis"].item() == b["dis"].item() and a["div"].item() == b["div"].item()


def test_eval_mode_draws_no_mask_and_equals_a_mask_of_ones():
    x, y = features(4, 12), torch.tensor([0, 1, 2, 3])
    loss = MCLoss(num_classes=4, num_channels=12).eval()
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    got = loss.terms(x, y, generator=gen)
    assert torch.equal(gen.get_state(), state)  # nothing drawn
    ones = loss.train().terms(x, y, mask=torch.ones(12, dtype=torch.float64))
    dis, div = reference_terms(x, y, None, 4, "max")
    assert got["dis"].item() == pytest.approx(dis.item(), rel=1e-12)
    assert got["div"].item() == pytest.approx(div.item(), rel=1e-12)
    assert got["dis"].item() == pytest.approx(ones["dis"].item(), rel=1e-12)


@pytest.mark.parametrize(
    ("c", "k", "kwargs", "keep"),
    [
        (600, 200, {}, [2] * 200),  # the authors' VGG16: 2 of 3
        (2048, 200, {"drop": 4}, [6] * 152 + [7] * 48),  # the authors' ResNet-50
        (23, 5, {"keep_ratio": 0.5}, [2, 2, 3, 3, 3]),  # 4 -> 2, 5 -> 2.5 rounds up to 3
        (15, 5, {"keep_ratio": 0.1}, [1] * 5),  # at least one
        (12, 4, {"keep_ratio": 1.0}, [3] * 4),
    ],
)
@pytest.mark.parametrize("per_sample", [False, True])
def test_drawn_mask_keeps_exactly_keep_g_per_group(c, k, kwargs, keep, per_sample):
    loss = MCLoss(num_classes=k, num_channels=c, per_sample_mask=per_sample, **kwargs)
    assert list(loss.group_keep) == keep
    rows = 3 if per_sample else 1
    mask = loss.draw_mask(rows, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (rows, c) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    kept = torch.zeros(rows, k).index_add_(1, loss.group_index, mask)
    assert torch.equal(kept, torch.tensor(keep, dtype=torch.float32).expand(rows, k))


def test_per_sample_masks_differ_between_samples_and_shared_mask_is_shared():
    x, y = features(6, 30, seed=3), torch.arange(6) % 10
    for per_sample in (False, True):
        loss = MCLoss(num_classes=10, num_channels=30, per_sample_mask=per_sample)
        kept = loss._resolve_mask(x, None, torch.Generator().manual_seed(0))
        assert kept.shape == ((6, 30) if per_sample else (1, 30))
        if per_sample:
            assert len({tuple(row.tolist()) for row in kept}) > 1
        drawn = loss(x, y, generator=torch.Generator().manual_seed(0)).item()
        injected = loss(x, y, mask=kept.expand(6, 30).double()).item()
        assert drawn == pytest.approx(injected, rel=1e-12)
    mask = MCLoss(num_classes=10, num_channels=30).draw_mask(6)
    assert len({tuple(row.tolist()) for row in mask}) > 1  # rows are independent draws


def test_same_seed_same_mask_and_loss_different_seeds_differ():
    loss = MCLoss(num_classes=20, num_channels=60)
    masks = [loss.draw_mask(1, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])
    x, y = features(4, 60, seed=1), torch.tensor([0, 5, 10, 19])
    values = [loss(x, y, generator=torch.Generator().manual_seed(s)).item() for s in (7, 7, 8)]
    assert values[0] == values[1] != values[2]
    with_mask = loss(x, y, mask=masks[0][0]).item()
    assert with_mask == pytest.approx(values[0], rel=1e-12)


def test_dis_reads_the_masked_features_and_div_the_unmasked():
    x, y = features(3, 12, seed=2), torch.tensor([0, 1, 3])
    loss = MCLoss(num_classes=4, num_channels=12)
    a = loss.terms(x, y, mask=torch.ones(12))
    b = loss.terms(x, y, mask=torch.tensor([1.0, 0.0, 1.0] * 4))
    assert a["div"].item() == b["div"].item()
    assert a["dis"].item() != b["dis"].item()


def test_from_paper_matches_alpha_beta_gradients_and_documents_uneven_groups():
    x, y = features(4, 12, seed=4).requires_grad_(True), torch.tensor([0, 1, 2, 3])
    mask = torch.tensor([1.0, 1.0, 0.0] * 4)
    paper = MCLoss.from_paper(mu=0.5, lam=4.0, num_classes=4, num_channels=12)
    direct = MCLoss(num_classes=4, num_channels=12, alpha=0.5, beta=0.5 * 4.0 * 3)
    assert paper.weights == direct.weights
    (g1,) = torch.autograd.grad(paper(x, y, mask=mask), x)
    (g2,) = torch.autograd.grad(direct(x, y, mask=mask), x)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    # the paper's own form, L = mu * (L_dis - lam * mean S), has the same gradient
    t = direct.terms(x, y, mask=mask)
    s_mean = (1.0 - t["div"]) * 3
    (g3,) = torch.autograd.grad(0.5 * (t["dis"] - 4.0 * s_mean), x)
    torch.testing.assert_close(g1, g3, rtol=1e-10, atol=1e-14)
    uneven = MCLoss.from_paper(mu=1.0, lam=2.0, num_classes=4, num_channels=14)
    assert uneven.weights["div"] == pytest.approx(2.0 * 14 / 4)  # the mean group size
    with pytest.raises(ValueError, match="takes mu and lam instead of alpha and beta"):
        MCLoss.from_paper(mu=1.0, lam=1.0, num_classes=4, num_channels=12, beta=2.0)


@pytest.mark.parametrize("pool", ["max", "avg"])
@pytest.mark.parametrize("c", [12, 14])
def test_gradcheck_float64(pool, c):
    x = features(3, c, h=2, w=3, seed=5).requires_grad_(True)
    y = torch.tensor([0, 3, 2])
    loss = MCLoss(num_classes=4, num_channels=c, pool=pool)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0] * (c // 4) + [0.0] * (c % 4)] * 3)
    mask[1] = 1.0 - mask[1]
    mask[2] = 1.0
    for m in (mask, mask[0], None):
        assert torch.autograd.gradcheck(lambda z, m=m: loss.eval()(z, y, mask=m), (x,))


def test_core_function_gradcheck_directly():
    x = features(2, 14, h=2, w=2, seed=6).flatten(2).requires_grad_(True)
    segments = (_Segment(0, 6, 0, 2, 3, 2), _Segment(6, 14, 2, 2, 4, 3))
    kept = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1]], dtype=torch.bool)
    bias = torch.where(kept, 0.0, -math.inf).double().unsqueeze(-1)
    floor = torch.tensor([0.0, 0.0, -math.inf, 0.0], dtype=torch.float64).view(1, 4, 1, 1)
    for pool in ("max", "avg"):
        for b, f in ((bias, floor), (None, None)):
            fn = lambda z, b=b, f=f, pool=pool: _MCCore.apply(z, b, f, segments, pool)  # noqa: E731
            assert torch.autograd.gradcheck(fn, (x,))


@pytest.mark.parametrize("s", [1, 2, 3, 4, 5, 7])
def test_group_max_equals_amax(s):
    v = torch.randn(3, 4, s, 5)
    assert torch.equal(_group_max(v), v.amax(-2, keepdim=True))


def test_ties_share_the_gradient_like_amax():
    x = features(2, 6, h=2, w=2, seed=7)
    x[:, 1] = x[:, 0]  # channels 0 and 1 of group 0 tie everywhere (in value and softmax)
    x = x.requires_grad_(True)
    y = torch.tensor([0, 1])
    loss = MCLoss(num_classes=2, num_channels=6).eval()
    (got,) = torch.autograd.grad(loss(x, y), x)

    def amax_version(z):
        flat = z.flatten(2)
        scores = z.view(2, 2, 3, 2, 2).amax(2).mean((2, 3))
        sums = torch.softmax(flat, -1).view(2, 2, 3, 4).amax(2).sum(-1)
        return 1.5 * F.cross_entropy(scores, y) + 20.0 * (1 - (sums / 3).mean())

    (want,) = torch.autograd.grad(amax_version(x), x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_backward_twice_with_retain_graph_gives_the_same_gradient():
    x, y = features(3, 12, seed=8).requires_grad_(True), torch.tensor([0, 1, 2])
    for pool in ("max", "avg"):
        loss = MCLoss(num_classes=4, num_channels=12, pool=pool)
        out = loss(x, y, generator=torch.Generator().manual_seed(0))
        (g1,) = torch.autograd.grad(out, x, retain_graph=True)
        (g2,) = torch.autograd.grad(out, x)
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_div_range_and_extremes():
    loss = MCLoss(num_classes=4, num_channels=12).eval()
    y = torch.tensor([0, 1])
    div = loss.terms(features(2, 12, seed=9), y)["div"].item()
    assert 0.0 <= div <= 1.0 - 1.0 / 3
    same = features(2, 4, seed=9).repeat_interleave(3, dim=1)  # all channels of a group alike
    assert loss.terms(same, y)["div"].item() == pytest.approx(1.0 - 1.0 / 3, abs=1e-12)
    spread = torch.full((2, 12, 3, 4), -1e4, dtype=torch.float64)
    for c in range(12):  # each channel of a group peaks at its own position
        spread[:, c].view(2, -1)[:, c % 3] = 1e4
    assert loss.terms(spread, y)["div"].item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_float32_results_close_to_float32(dtype):
    x, y = features(4, 12, seed=10, dtype=torch.float32), torch.tensor([0, 1, 2, 3])
    mask = torch.tensor([1.0, 0.0, 1.0] * 4)
    loss = MCLoss(num_classes=4, num_channels=12)
    half = x.to(dtype).requires_grad_(True)
    terms = loss.terms(half, y, mask=mask)
    full = loss.terms(x, y, mask=mask)
    for name in ("dis", "div"):
        assert terms[name].dtype == torch.float32 and torch.isfinite(terms[name])
        assert terms[name].item() == pytest.approx(full[name].item(), rel=2e-2, abs=2e-3)
    loss(half, y, mask=mask).backward()
    assert half.grad.dtype == dtype and torch.isfinite(half.grad.float()).all()


def test_uneven_groups_helpers_and_registry():
    loss = MCLoss(num_classes=5, num_channels=23)
    assert loss.group_sizes == (4, 4, 5, 5, 5)
    assert loss.group_index.tolist() == [0] * 4 + [1] * 4 + [2] * 5 + [3] * 5 + [4] * 5
    x = features(2, 23, seed=11)
    pooled = loss.cross_channel_pool(x)
    assert pooled.shape == (2, 5, 3, 4)
    torch.testing.assert_close(pooled[:, 2], x[:, 8:13].amax(1))
    mask = torch.ones(23)
    mask[8] = 0.0
    scores = loss.group_scores(x, mask=mask)
    torch.testing.assert_close(
        scores[:, 2], (x[:, 8:13] * mask[8:13, None, None]).amax(1).mean((1, 2))
    )
    avg = MCLoss(num_classes=5, num_channels=23, pool="avg").cross_channel_pool(x)
    torch.testing.assert_close(avg[:, 0], x[:, 0:4].mean(1))
    built = create_loss("mc", context={"num_classes": 5, "num_channels": 23, "embedding_dim": 8})
    assert isinstance(built, MCLoss) and LOSSES["mc"] is MCLoss
    assert MCLoss.consumes == "features" and built.weights == {"dis": 1.5, "div": 20.0}
    assert built.state_dict() == {}


def test_one_channel_per_class_warns():
    with pytest.warns(UserWarning, match="groups of one channel"):
        loss = MCLoss(num_classes=5, num_channels=7)
    assert loss.group_sizes == (1, 1, 1, 2, 2) and loss.group_keep == (1, 1, 1, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MCLoss(num_classes=5, num_channels=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, r"num_classes must be in \[1, inf\), got 0"),
        ({"num_classes": 2.0}, "num_classes must be an integer"),
        (
            {"num_channels": 3},
            "num_channels must be >= num_classes .* got num_channels=3 < num_classes=4",
        ),
        ({"keep_ratio": 0.0}, r"keep_ratio must be a finite number in \(0, 1\], got 0.0"),
        ({"keep_ratio": 1.5}, r"keep_ratio must be a finite number in \(0, 1\], got 1.5"),
        ({"drop": -1}, r"drop must be in \[0, inf\), got -1"),
        ({"drop": 3}, r"drop must be in \[0, 2\] so that the smallest group \(3 channels\)"),
        ({"drop": 1, "keep_ratio": 2 / 3}, "give either keep_ratio or drop, not both"),
        ({"pool": "mean"}, "pool must be one of 'max', 'avg', got 'mean'"),
        ({"alpha": -1.0}, r"alpha must be a finite number in \[0, inf\)"),
        ({"beta": float("nan")}, "beta must be a finite number"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    args = {"num_classes": 4, "num_channels": 12, **kwargs}
    with pytest.raises(ValueError, match=message):
        MCLoss(**args)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (
            torch.randn(2, 12, 9),
            torch.tensor([0, 1]),
            r"4 dimensions \(B, C, H, W\), got shape \(2, 12, 9\)",
        ),
        (torch.randn(2, 10, 3, 3), torch.tensor([0, 1]), r"num_channels=12 channels .* got 10"),
        (torch.randn(0, 12, 3, 3), torch.zeros(0, dtype=torch.long), "empty batch"),
        (torch.randn(2, 12, 0, 3), torch.tensor([0, 1]), "H, W >= 1"),
        (torch.zeros(2, 12, 3, 3, dtype=torch.long), torch.tensor([0, 1]), "floating-point"),
        (torch.randn(2, 12, 3, 3), torch.tensor([0.0, 1.0]), "integer tensor"),
        (
            torch.randn(2, 12, 3, 3),
            torch.tensor([0, 4]),
            r"labels must be in \[0, 4\), got a label 4",
        ),
        (torch.randn(2, 12, 3, 3), torch.tensor([-1, 0]), "got a label -1"),
        (torch.randn(2, 12, 3, 3), torch.tensor([0, 1, 2]), r"shape \(2,\)"),
        ([[0.0]], torch.tensor([0]), "features must be a torch.Tensor"),
    ],
)
def test_bad_inputs_name_what_was_expected(x, y, message):
    with pytest.raises(ValueError, match=message):
        MCLoss(num_classes=4, num_channels=12)(x, y)


def test_non_finite_features_and_bad_masks():
    x, y = torch.randn(2, 12, 3, 3), torch.tensor([0, 1])
    x_bad = x.clone()
    x_bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="features must be finite: found 1 NaN/inf"):
        MCLoss(num_classes=4, num_channels=12, check_finite=True)(x_bad, y)
    loss = MCLoss(num_classes=4, num_channels=12)
    cases = [
        (torch.ones(13), r"mask must have shape \(12,\) or \(2, 12\), got \(13,\)"),
        (torch.ones(3, 12), r"mask must have shape \(12,\) or \(2, 12\), got \(3, 12\)"),
        (torch.ones(12, dtype=torch.long), "mask must be a bool or floating-point tensor"),
        (torch.full((12,), 0.5), "mask must hold only 0 and 1"),
        ([1.0] * 12, "mask must be a torch.Tensor"),
    ]
    for mask, message in cases:
        with pytest.raises(ValueError, match=message):
            loss(x, y, mask=mask)
    bool_mask = torch.tensor([True, False, True] * 4)
    assert loss(x, y, mask=bool_mask).item() == loss(x, y, mask=bool_mask.float()).item()
