"""Pruning criteria, CPLI's terms and refit, the prunable-layer search and the record, each
against a plain per-channel reference written here."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from chanloss.models import create_model
from chanloss.models.pruned import apply_structure, check_record
from chanloss.pruning.cpli import loss_term, reconstruction_term, refit_reader
from chanloss.pruning.criteria import (
    Calibration,
    bn_scale_importance,
    l1_importance,
    taylor_importance,
    top_channels,
)
from chanloss.pruning.graph import (
    PruneError,
    count_macs,
    find_prunable,
    make_record,
    mc_groups,
    plan_keep_counts,
    prune_to,
)


def _convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model(
        "convnet_small", num_classes=4, in_channels=1, width=4, feature_channels=8, pools=1
    )
    for m in model.modules():  # non-trivial BN parameters and statistics
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _calibration(batches: int = 2) -> Calibration:
    g = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(6, 1, 8, 8, generator=g), torch.randint(0, 4, (6,), generator=g))
        for _ in range(batches)
    ]
    return Calibration(data, lambda model, x: model(x).logits)


EXAMPLE = torch.zeros(1, 1, 8, 8)


def test_prunable_layers_of_a_convnet_and_a_resnet():
    layers = find_prunable(_convnet(), EXAMPLE)
    assert [(x.name, x.reader_name, x.is_feature) for x in layers] == [
        ("body.0", "body.3", False),
        ("body.3", "body.7", False),
        ("body.7", "body.10", False),
        ("body.10", "classifier", True),
    ]
    resnet = create_model("resnet20", num_classes=3, in_channels=1, width=0.25).eval()
    names = [x.name for x in find_prunable(resnet, EXAMPLE)]
    # only the first convolution of each block: stem and stage outputs are tied to residual sums
    assert names == [f"body.{s}.{b}.conv1" for s in (3, 4, 5) for b in range(3)]


def test_l1_and_bn_scale_match_per_channel_references():
    model = _convnet()
    layer = find_prunable(model, EXAMPLE)[1]
    w = layer.conv.weight.detach()
    ref = torch.tensor([sum(abs(float(v)) for v in w[c].flatten()) for c in range(w.shape[0])])
    torch.testing.assert_close(l1_importance(layer), ref)
    gamma = layer.bn.weight.detach()
    torch.testing.assert_close(
        bn_scale_importance(layer), torch.tensor([abs(float(v)) for v in gamma])
    )
    layer.bn = None
    with pytest.raises(PruneError, match="bn_scale needs a batch norm"):
        bn_scale_importance(layer)


def test_taylor_matches_a_per_channel_reference():
    model = _convnet()
    layers = find_prunable(model, EXAMPLE)
    calibration = _calibration()
    got = taylor_importance(model, layers, calibration)
    for layer in layers:
        ref = torch.zeros(layer.channels)
        for x, y in calibration:
            model.zero_grad()
            (F.cross_entropy(model(x).logits, y, reduction="sum") / y.shape[0]).backward()
            for c in range(layer.channels):
                gw = layer.bn.weight.grad[c] * layer.bn.weight[c]
                gb = layer.bn.bias.grad[c] * layer.bn.bias[c]
                ref[c] += float((gw + gb).detach()) ** 2
        torch.testing.assert_close(got[layer.name], ref / 2, rtol=1e-4, atol=1e-10)


def test_top_channels_overall_and_evenly_within_groups():
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.8, 0.2, 0.7, 0.4, 0.6])
    assert top_channels(scores, 3, None) == [2, 4, 6]
    groups = mc_groups(9, 3)  # 3 channels per class
    assert groups == [range(0, 3), range(3, 6), range(6, 9)]
    kept = top_channels(scores, 3, groups)
    ref = [max(g, key=lambda i: float(scores[i])) for g in groups]
    assert kept == ref == [2, 4, 6]
    assert top_channels(torch.tensor([0.1, 0.9, 0.8, 0.2, 0.3, 0.4, 0.7]), 4, mc_groups(7, 2)) == [
        1,
        2,
        5,
        6,
    ]
    assert mc_groups(7, 2) == [range(0, 3), range(3, 7)]


def _captured(model: nn.Module, module: nn.Module, calibration: Calibration) -> list[torch.Tensor]:
    inputs = []

    def hook(m, args):
        args[0].retain_grad()
        inputs.append(args[0])

    handle = module.register_forward_pre_hook(hook)
    for x, y in calibration:
        calibration.loss(model, x, y).backward()
    handle.remove()
    return inputs


def test_loss_term_matches_reference_and_is_the_loss_derivative_of_scaling_a_channel():
    model = _convnet().double()
    layer = find_prunable(model, EXAMPLE.double())[1]
    calibration = _calibration(1)
    calibration.batches = [(x.double(), y) for x, y in calibration.batches]
    inputs = _captured(model, layer.reader, calibration)
    s = loss_term(inputs)
    a, g = inputs[0].detach(), inputs[0].grad
    ref = torch.tensor(
        [
            sum(abs(float((g[n, c] * a[n, c]).sum())) for n in range(a.shape[0])) / a.shape[0]
            for c in range(a.shape[1])
        ],
        dtype=s.dtype,
    )
    torch.testing.assert_close(s, ref)

    # sum over positions of g * a is d loss / d eps when channel c is scaled by (1 + eps):
    # check it by central differences, per image, in float64
    x, y = calibration.batches[0]
    c, eps = 2, 1e-6

    def loss_scaled(e: float, n: int) -> float:
        def scale(m, args):
            t = args[0].clone()
            t[:, c] *= 1 + e
            return (t,)

        handle = layer.reader.register_forward_pre_hook(scale)
        with torch.no_grad():
            value = float(
                F.cross_entropy(model(x[n : n + 1]).logits, y[n : n + 1], reduction="sum")
            )
        handle.remove()
        return value

    for n in range(x.shape[0]):
        numeric = (loss_scaled(eps, n) - loss_scaled(-eps, n)) / (2 * eps)
        assert abs(numeric - float((g[n, c] * a[n, c]).sum())) < 1e-6


def test_reconstruction_term_matches_a_per_channel_per_output_reference():
    torch.manual_seed(0)
    reader = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
    a = [torch.randn(5, 3, 7, 7), torch.randn(2, 3, 7, 7)]
    w = torch.tensor([0.5, 1.0, 2.0, 0.0])
    got = reconstruction_term(reader, a, w)
    ref = torch.zeros(3)
    for batch in a:
        for c in range(3):
            for j in range(4):
                out = F.conv2d(batch[:, c : c + 1], reader.weight[j : j + 1, c : c + 1], None, 2, 1)
                ref[c] += w[j] * out.square().sum()
    torch.testing.assert_close(got, ref.detach() / 7, rtol=1e-5, atol=1e-6)

    linear = nn.Linear(3, 2)
    feats = [torch.randn(6, 3)]
    got = reconstruction_term(linear, feats, torch.tensor([1.0, 3.0]))
    ref = torch.tensor(
        [
            sum(
                [1.0, 3.0][j] * float((feats[0][:, c] * linear.weight[j, c]).square().sum())
                for j in range(2)
            )
            / 6
            for c in range(3)
        ]
    )
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_refit_recovers_weights_and_matches_lstsq():
    torch.manual_seed(0)
    true = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    a = [torch.randn(8, 3, 6, 6) for _ in range(2)]
    targets = [true(x).detach() for x in a]
    reader = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    reader.bias.data.copy_(true.bias.data)
    refit_reader(reader, a, targets, ridge=1e-10)
    torch.testing.assert_close(reader.weight, true.weight, rtol=1e-4, atol=1e-4)

    # noisy targets: the solution is the least-squares one of the unfolded problem
    noisy = [t + 0.3 * torch.randn_like(t) for t in targets]
    refit_reader(reader, a, noisy, ridge=1e-10)
    x = torch.cat([F.unfold(b, 3, padding=1).transpose(1, 2).reshape(-1, 27) for b in a])
    t = torch.cat(
        [(n - true.bias.view(1, -1, 1, 1)).flatten(2).transpose(1, 2).reshape(-1, 4) for n in noisy]
    )
    ref = torch.linalg.lstsq(x.double(), t.double().detach()).solution.t().reshape(4, 3, 3, 3)
    torch.testing.assert_close(reader.weight.double(), ref, rtol=1e-4, atol=1e-4)


def test_plan_reaches_the_target_and_refuses_the_unreachable():
    model = _convnet()
    layers = [x for x in find_prunable(model, EXAMPLE) if not x.is_feature]
    counts, before, planned = plan_keep_counts(model, layers, 2.0, EXAMPLE, None)
    assert before / planned >= 2.0
    looser = plan_keep_counts(model, layers, 1.5, EXAMPLE, None)[0]
    assert all(looser[n] >= counts[n] for n in counts)
    with pytest.raises(PruneError, match=r"--speedup 1000 is unreachable.*--prune-features"):
        plan_keep_counts(model, layers, 1000.0, EXAMPLE, None)


def test_record_reapplied_to_a_fresh_model_gives_the_same_outputs():
    model = _convnet()
    layers = find_prunable(model, EXAMPLE)
    kept = {"body.0": [0, 2], "body.3": [1, 2, 3], "body.7": [0, 5], "body.10": [1, 3, 4, 7]}
    record = make_record(layers, kept, EXAMPLE, "l1")
    pruned = copy.deepcopy(model)
    prune_to(pruned, [x for x in find_prunable(pruned, EXAMPLE)], kept, EXAMPLE)
    assert pruned.num_features == 4 and pruned.classifier.in_features == 4
    x = torch.randn(3, 1, 8, 8)
    # pruned channels are gone: the kept ones compute what they did, given the same weights
    fresh = apply_structure(_convnet(seed=5), record)
    fresh.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(fresh(x).logits, pruned(x).logits)
    assert fresh.body[0].out_channels == 2 and fresh.body[3].in_channels == 2
    assert count_macs(fresh, EXAMPLE)[0] < count_macs(model, EXAMPLE)[0]
    # the first layer alone: the kept channels' activations equal the original's
    torch.testing.assert_close(fresh.body[:3](x), model.body[:3](x)[:, [0, 2]])

    for bad, match in [
        ({**record, "format": "x"}, "not a 'chanloss-pruning'"),
        ({**record, "version": 9}, "version 9"),
        ({**record, "input_shape": [1, 1]}, "input_shape"),
        ({**record, "layers": [{"name": "body.0", "total": 4, "kept": [2, 1]}]}, "sorted"),
        ({**record, "layers": [{"name": "body.0", "total": 4, "kept": [0, 4]}]}, r"\[0, 4\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_record(bad)
    with pytest.raises(ValueError, match="had 5 channels, the model built"):
        apply_structure(
            _convnet(), {**record, "layers": [{"name": "body.3", "total": 5, "kept": [0]}]}
        )
    with pytest.raises(ValueError, match="not a convolution"):
        apply_structure(
            _convnet(), {**record, "layers": [{"name": "head", "total": 5, "kept": [0]}]}
        )
