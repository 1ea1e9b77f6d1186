"""CC-Loss (docs/design.md, "CC-Loss"): per-pair reference, edge cases, gradients, errors."""

import math

import pytest
import torch
from references import reference_ratio
from torch.profiler import ProfilerActivity, profile

from chanloss.losses import LOSSES, CCLoss, create_loss

C = 8


def make_batch(labels, *, channels=C, hw=(3, 2), dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), channels, *hw, generator=gen, dtype=dtype)
    return x.requires_grad_(), torch.tensor(labels)


def make_loss(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("num_channels", C)
    kwargs.setdefault(
        "placement", "branch"
    )  # this file tests the side branch (gate: test_cc_gate.py)
    kwargs.setdefault("reduction", 2)
    kwargs.setdefault(
        "form", "ratio"
    )  # this file tests the ratio form (test_cc_loss_forms.py the others)
    return CCLoss(**kwargs)


def reference_cc(loss, x, y, pair_reduction):
    """Per-pair double loop with the loss's own SE layers: the plain reading of docs/design.md."""
    z = x.mean(dim=(2, 3))
    a = torch.sigmoid(loss.fc2(torch.relu(loss.fc1(z))))
    return reference_ratio(a, y, pair_reduction, loss.eps)


def grads(value, x, loss):
    return torch.autograd.grad(value, [x, *loss.parameters()])


@pytest.mark.parametrize("pair_reduction", ["mean", "sum"])
def test_matches_per_pair_reference_value_and_gradients(pair_reduction):
    loss = make_loss(pair_reduction=pair_reduction, weight=0.25).double()
    x, y = make_batch([0, 1, 0, 2, 1, 1, 3])
    cc = loss.terms(x, y)["cc"]
    ref = reference_cc(loss, x, y, pair_reduction)
    assert cc.dim() == 0 and cc.dtype == torch.float64
    assert cc.item() == pytest.approx(ref.item(), rel=1e-10)
    assert loss(x, y).item() == pytest.approx(0.25 * ref.item(), rel=1e-10)
    for got, want in zip(grads(cc, x, loss), grads(ref, x, loss), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_mean_and_sum_differ_by_the_pair_counts():
    x, y = make_batch([0, 0, 0, 1, 1])  # |P| = 6 + 2 = 8 ordered pairs, |N| = 12
    mean = make_loss(pair_reduction="mean", eps=1e-300).double().terms(x, y)["cc"]
    total = make_loss(pair_reduction="sum", eps=1e-300).double().terms(x, y)["cc"]
    assert mean.item() == pytest.approx(total.item() * 12 / 8, rel=1e-12)


def test_one_class_only_gives_zero_with_finite_zero_gradient():
    loss = make_loss()
    for dtype in (torch.float32, torch.float64):
        loss = loss.to(dtype)
        x, y = make_batch([2, 2, 2, 2], dtype=dtype)
        cc = loss.terms(x, y)["cc"]
        assert cc.item() == 0.0 and math.isfinite(cc.item())
        for g in grads(cc, x, loss):
            assert torch.isfinite(g).all()
            assert torch.equal(g, torch.zeros_like(g))
    x, y = make_batch([5], dtype=torch.float64)  # a single sample: no pair at all
    assert loss.terms(x, y)["cc"].item() == 0.0


@pytest.mark.parametrize("pair_reduction", ["mean", "sum"])
def test_all_labels_distinct_gives_intra_zero_and_the_reference_gradient(pair_reduction):
    loss = make_loss(pair_reduction=pair_reduction).double()
    x, y = make_batch([0, 1, 2, 3, 4])
    cc = loss.terms(x, y)["cc"]
    ref = reference_cc(loss, x, y, pair_reduction)
    assert cc.item() == 0.0 == ref.item()
    # intra is the zero numerator of the ratio, so the gradient is finite and exactly zero.
    for got, want in zip(grads(cc, x, loss), grads(ref, x, loss), strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_identical_attention_in_every_class_gives_zero_intra():
    loss = make_loss().double()
    x, y = make_batch([0, 1, 2])
    x = torch.cat([x, x]).detach()  # every sample twice: same-class distances are 0
    cc = loss.terms(x, torch.cat([y, y]))["cc"]
    assert abs(cc.item()) < 1e-12


@pytest.mark.parametrize("pair_reduction", ["mean", "sum"])
def test_gradcheck_features_and_se_parameters(pair_reduction):
    loss = make_loss(pair_reduction=pair_reduction, eps=1e-3).double()
    x, y = make_batch([0, 1, 0, 1, 2, 0], hw=(2, 2))
    params = list(loss.parameters())
    names = [n for n, _ in loss.named_parameters()]

    def fn(features, *values):
        state = dict(zip(names, values, strict=True))
        out = torch.func.functional_call(loss, state, (features, y))
        return out

    assert torch.autograd.gradcheck(fn, (x, *[p.detach().requires_grad_() for p in params]))


def test_half_precision_inputs_give_float32_close_to_float32():
    loss = make_loss(num_channels=16, reduction=4)
    x, y = make_batch([0, 1, 2, 0, 1, 2, 3, 3], channels=16, dtype=torch.float32)
    x = x.detach()
    full = loss(x, y)
    for dtype in (torch.float16, torch.bfloat16):
        xh = x.to(dtype)
        for autocast in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = loss(xh, y)
            assert out.dtype == torch.float32 and torch.isfinite(out)
            same_input = loss(xh.float(), y)
            assert out.item() == pytest.approx(same_input.item(), rel=1e-6)
            assert out.item() == pytest.approx(full.item(), rel=5e-2)
        xg = xh.clone().requires_grad_()
        loss(xg, y).backward()
        assert xg.grad.dtype == dtype and torch.isfinite(xg.grad.float()).all()


def test_float64_features_with_float32_parameters_compute_in_float64():
    loss = make_loss()
    x, y = make_batch([0, 1, 0, 1])
    out = loss(x, y)
    assert out.dtype == torch.float64
    assert out.item() == pytest.approx(make_loss().double()(x, y).item(), rel=1e-6)


def test_attention_shape_range_and_se_formula():
    loss = make_loss(num_channels=12, reduction=16, min_hidden=1)  # 12 // 16 == 0 -> 1 unit
    assert loss.hidden == 1
    x, _ = make_batch([0] * 5, channels=12, hw=(4, 4), dtype=torch.float32)
    a = loss.attention(x)
    assert a.shape == (5, 12) and ((a > 0) & (a < 1)).all()
    z = x.mean(dim=(2, 3))
    h = torch.relu(z @ loss.fc1.weight.T + loss.fc1.bias)
    torch.testing.assert_close(a, torch.sigmoid(h @ loss.fc2.weight.T + loss.fc2.bias))
    assert loss.attention(x.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="features must have size 12 in dimension 1"):
        loss.attention(torch.randn(2, 11, 3, 3))


def test_parameters_state_dict_and_api_attributes():
    loss = CCLoss(placement="branch", num_channels=64, reduction=16, weight=0.5, eps=1e-4)
    shapes = {k: tuple(v.shape) for k, v in loss.state_dict().items()}
    assert shapes == {
        "fc1.weight": (4, 64),
        "fc1.bias": (4,),
        "fc2.weight": (64, 4),
        "fc2.bias": (64,),
    }
    assert sum(p.numel() for p in loss.parameters() if p.requires_grad) == 4 * 64 * 2 + 4 + 64
    assert loss.weights == {"cc": 0.5} and loss.eps == 1e-4
    assert loss.consumes == "features" and not loss.provides_logits
    assert loss.gathers_across_ranks is False  # no process group in this process
    clone = CCLoss(placement="branch", num_channels=64, eps=1e-4)
    clone.load_state_dict(loss.state_dict())
    x, y = make_batch([0, 1, 0, 1], channels=64, dtype=torch.float32)
    assert clone.terms(x, y)["cc"].item() == loss.terms(x, y)["cc"].item()


def test_registry_builds_the_loss_from_the_trainer_context():
    loss = create_loss(
        "cc", context={"num_classes": 10, "num_channels": 64}, weight=2.0, placement="branch"
    )
    assert isinstance(loss, CCLoss) and LOSSES["cc"] is CCLoss
    assert loss.num_channels == 64 and loss.weights == {"cc": 2.0} and loss.hidden == 4
    default = create_loss("cc", context={"num_classes": 10, "num_channels": 64})
    # the defaults (docs/cc-loss.md): the gate reading, the ratio form, weight 0.01
    assert (default.placement, default.form, default.weights) == ("gate", "ratio", {"cc": 0.01})
    assert default.consumes == "attention" and not list(default.parameters())
    # the branch keeps its weight from before the gate, so old configs train as they did
    branch = create_loss("cc", context={"num_channels": 64}, placement="branch")
    assert branch.weights == {"cc": 1.0}


def test_terms_keep_no_state_between_calls():
    loss = make_loss().double()
    x, y = make_batch([0, 1, 1, 0, 2])
    first = loss.terms(x, y)["cc"].item()
    loss.terms(*make_batch([3, 3, 4, 4], seed=5))
    assert loss.terms(x, y)["cc"].item() == first


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (torch.randn(4, C, 3), torch.zeros(4, dtype=torch.long), r"4 dimensions \(B, C, H, W\)"),
        (torch.randn(4, C + 1, 2, 2), torch.zeros(4, dtype=torch.long), r"size 8 in dimension 1"),
        (torch.randn(0, C, 2, 2), torch.zeros(0, dtype=torch.long), "empty batch: expected B >= 1"),
        (torch.randn(2, C, 0, 2), torch.zeros(2, dtype=torch.long), "H >= 1 and W >= 1"),
        (torch.zeros(2, C, 2, 2, dtype=torch.long), torch.zeros(2, dtype=torch.long), "floating"),
        ([[0.0]], torch.zeros(1, dtype=torch.long), "features must be a torch.Tensor"),
        (torch.randn(2, C, 2, 2), torch.zeros(2), "integer tensor.*got dtype torch.float32"),
        (torch.randn(2, C, 2, 2), torch.zeros(2, dtype=torch.bool), "integer tensor"),
        (torch.randn(2, C, 2, 2), torch.zeros(3, dtype=torch.long), r"shape \(2,\).*got \(3,\)"),
        (torch.randn(2, C, 2, 2), torch.zeros(2, 1, dtype=torch.long), r"got \(2, 1\)"),
        (torch.randn(2, C, 2, 2), torch.tensor([0, -3]), "class indices >= 0, got a label -3"),
        (torch.randn(2, C, 2, 2), [0, 1], "labels must be a torch.Tensor"),
        (
            torch.randn(2, C, 2, 2, device="meta"),
            torch.zeros(2, dtype=torch.long),
            "on the loss's device cpu.*got features on meta",
        ),
    ],
)
def test_bad_input_names_what_was_expected(features, labels, message):
    with pytest.raises(ValueError, match=message):
        make_loss()(features, labels)


def test_non_finite_features_rejected_only_with_check_finite():
    x, y = make_batch([0, 1, 0], dtype=torch.float32)
    x = x.detach()
    x[1, 2, 0, 1] = float("inf")
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="features must be finite: found 2 NaN/inf values of 144"):
        make_loss(check_finite=True)(x, y)
    make_loss()(x, y)  # without the check the call goes through (no host sync)


def test_forward_rejects_keyword_arguments():
    x, y = make_batch([0, 1])
    with pytest.raises(ValueError, match=r"no keyword arguments, got \['mask'\]"):
        make_loss().double()(x, y, mask=None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_channels": 0}, r"num_channels must be in \[1, inf\), got 0"),
        ({"num_channels": 2.5}, "num_channels must be an integer, got 2.5"),
        ({"reduction": 0}, r"reduction must be in \[1, inf\), got 0"),
        ({"pair_reduction": "max"}, "pair_reduction must be one of 'mean', 'sum', got 'max'"),
        ({"eps": 0.0}, r"eps must be a finite number in \(0, inf\), got 0.0"),
        ({"eps": -1e-6}, r"eps must be a finite number in \(0, inf\)"),
        ({"eps": float("nan")}, "eps must be a finite number.*got nan"),
        ({"weight": float("inf")}, "weight must be a finite number.*got inf"),
        ({"weight": float("nan")}, "weight must be a finite number.*got nan"),
        ({"weight": -1.0}, r"weight must be a finite number in \[0, inf\), got -1.0"),
        ({"weight": "1"}, "weight must be a real number, got '1'"),
        ({"gather": 1}, "gather must be True or False, got 1"),
        ({"check_finite": "yes"}, "check_finite must be True or False"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    kwargs = {"num_channels": C, **kwargs}
    with pytest.raises(ValueError, match=message):
        CCLoss(**kwargs)


def test_constructor_is_keyword_only():
    with pytest.raises(TypeError):
        CCLoss(C)
    with pytest.raises(ValueError, match="placement must be one of"):
        CCLoss(num_channels=C, placement="side")


def _peak_cpu_bytes(fn):
    """Peak of the bytes allocated by the CPU allocator while ``fn`` runs (profiler records)."""
    try:
        from torch._C._profiler import _EventType
    except ImportError:  # pragma: no cover - private API moved
        pytest.skip("torch profiler allocation records unavailable")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocs, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation:
            allocs.append((event.start_time_ns, event.extra_fields.alloc_size))
    current = peak = 0
    for _, size in sorted(allocs):
        current += size
        peak = max(peak, current)
    return peak


def test_pair_matrix_memory_is_quadratic_in_batch_not_batch_squared_times_channels():
    batch, channels = 512, 256  # (B, B, C) float32 would be 256 MiB; (B, B) is 1 MiB
    loss = CCLoss(placement="branch", num_channels=channels)
    x = torch.randn(batch, channels, 1, 1, requires_grad=True)
    y = torch.arange(batch) % 10
    peak = _peak_cpu_bytes(lambda: loss(x, y).backward())
    assert 0 < peak < 32 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_float32_gram_distances_stay_accurate_for_clustered_attention():
    torch.manual_seed(0)
    loss = CCLoss(
        placement="branch", num_channels=512
    )  # at initialisation all attention values are near 0.5
    x = torch.relu(torch.randn(48, 512, 3, 3))
    y = torch.arange(48) % 6
    exact = loss.double()(x.double(), y).item()
    assert loss.float()(x, y).item() == pytest.approx(exact, rel=1e-6)
