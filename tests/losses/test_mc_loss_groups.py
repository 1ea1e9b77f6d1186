"""MC-Loss with uneven groups as the authors ran ResNet-50 (group_average="per_size", drop per
group size) and the two readings of the paper's mu/lambda in from_paper."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chanloss.losses import MCLoss


def per_group_reference(x, y, mask, sizes, average):
    """One group at a time: masked CCMP, GAP, cross-entropy; softmax, CCMP, sum over positions.
    ``average="per_size"``: the authors' MC_ResNet50.py, one (1 - mean S / s) per group size s,
    added; ``"pooled"``: 1 - mean over all groups of S / size."""
    b = x.shape[0]
    scores, ratios, start = [], [], 0
    per_size: dict[int, list] = {}
    for size in sizes:
        chans = x[:, start : start + size]
        masked = chans * mask[start : start + size, None, None]
        scores.append(masked.max(dim=1).values.mean(dim=(1, 2)))
        s = torch.softmax(chans.flatten(2), dim=-1).max(dim=1).values.sum(-1)  # (B,)
        ratios.append(s / size)
        per_size.setdefault(size, []).append(s)
        start += size
    dis = F.cross_entropy(torch.stack(scores, 1), y)
    if average == "pooled":
        div = 1.0 - torch.stack(ratios, 1).mean()
    else:
        div = sum(1.0 - torch.stack(v, 1).mean() / size for size, v in per_size.items())
    assert b == y.shape[0]
    return dis, div


SIZES = [3, 3, 3, 4, 4]  # 17 channels, 5 classes: 3 groups of 3 then 2 of 4


@pytest.mark.parametrize("average", ["pooled", "per_size"])
def test_group_average_matches_a_per_group_reference(average):
    x = torch.randn(4, 17, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    y = torch.tensor([0, 4, 3, 1])
    mask = torch.tensor([1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1], dtype=torch.float64)
    loss = MCLoss(num_classes=5, num_channels=17, alpha=1.0, beta=10.0, group_average=average)
    terms = loss.terms(x, y, mask=mask)
    dis, div = per_group_reference(x, y, mask, SIZES, average)
    assert terms["dis"].item() == pytest.approx(dis.item(), rel=1e-12)
    assert terms["div"].item() == pytest.approx(div.item(), rel=1e-12)
    (got,) = torch.autograd.grad(loss(x, y, mask=mask), x)
    (want,) = torch.autograd.grad(dis + 10.0 * div, x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    small = x.detach()[:2, :, :2, :1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: loss(z, y[:2], mask=mask), (small,))


def test_per_size_equals_pooled_for_equal_groups():
    x = torch.randn(3, 12, 2, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 3])
    pooled = MCLoss(num_classes=4, num_channels=12).eval().terms(x, y)
    per_size = MCLoss(num_classes=4, num_channels=12, group_average="per_size").eval().terms(x, y)
    assert per_size["div"].item() == pytest.approx(pooled["div"].item(), rel=1e-14)


def test_resnet50_layout_drop_per_size_reproduces_the_authors_masks():
    # 2048 channels for 200 classes: 152 groups of 10, then 48 of 11; the authors keep 6 and 7
    for drop in (4, {10: 4, 11: 4}, {"10": 4, "11": 4}):
        loss = MCLoss(num_classes=200, num_channels=2048, drop=drop)
        assert loss.group_keep == (6,) * 152 + (7,) * 48
        mask = loss.draw_mask(2, generator=torch.Generator().manual_seed(0))
        assert mask[:, :1520].view(2, 152, 10).sum(-1).eq(6).all()
        assert mask[:, 1520:].view(2, 48, 11).sum(-1).eq(7).all()
    other = MCLoss(num_classes=200, num_channels=2048, drop={10: 3, 11: 5})
    assert set(other.group_keep[:152]) == {7} and set(other.group_keep[152:]) == {6}


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ({3: 1}, r"drop must give a count for every group size \[3, 4\], missing \[4\]"),
        ({3: 1, 5: 1, 4: 1}, r"drop keys must be the group sizes \[3, 4\] .*got 5"),
        ({3: 3, 4: 1}, r"drop\[3\] must be in \[0, 2\] so that a group of 3 channels"),
        ({3: 1, 4: -1}, r"drop\[4\] must be in \[0, inf\), got -1"),
        ({3: 1, 4: 1.5}, r"drop\[4\] must be an integer"),
    ],
)
def test_bad_drop_per_size(drop, message):
    with pytest.raises(ValueError, match=message):
        MCLoss(num_classes=5, num_channels=17, drop=drop)


def test_bad_group_average_and_reading():
    with pytest.raises(ValueError, match="group_average must be one of 'pooled', 'per_size'"):
        MCLoss(num_classes=5, num_channels=17, group_average="sizes")
    with pytest.raises(ValueError, match="reading must be one of 'equation', 'code', got 'x'"):
        MCLoss.from_paper(mu=1.0, lam=1.0, reading="x", num_classes=4, num_channels=12)


def test_from_paper_readings():
    x = torch.randn(3, 12, 2, 2, dtype=torch.float64).requires_grad_(True)
    y = torch.tensor([0, 1, 2])
    eq = MCLoss.from_paper(mu=0.5, lam=4.0, num_classes=4, num_channels=12).eval()
    code = MCLoss.from_paper(mu=0.5, lam=4.0, reading="code", num_classes=4, num_channels=12)
    assert eq.weights == {"dis": 0.5, "div": 0.5 * 4.0 * 3} and code.weights == {
        "dis": 0.5,
        "div": 0.5 * 4.0,
    }
    # "equation": mu * (L_dis - lam * mean S) with the paper's un-normalised mean S
    t = eq.terms(x, y)
    (g_eq,) = torch.autograd.grad(eq(x, y), x)
    (g_ref,) = torch.autograd.grad(0.5 * (t["dis"] - 4.0 * (1.0 - t["div"]) * 3), x)
    torch.testing.assert_close(g_eq, g_ref, rtol=1e-10, atol=1e-14)
    # "code": mu * (L_dis + lam * (1 - mean S / xi))
    t = code.eval().terms(x, y)
    (g_code,) = torch.autograd.grad(code(x, y), x)
    (g_ref,) = torch.autograd.grad(0.5 * (t["dis"] + 4.0 * t["div"]), x)
    torch.testing.assert_close(g_code, g_ref, rtol=1e-10, atol=1e-14)
