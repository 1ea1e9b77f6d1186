"""Group pruning: the groups Torch-Pruning gives (residual streams, the option-A shortcut's
channel map), the budgets, the group criteria against per-channel references, CPLI's terms and
greedy selection against brute-force references, the refit, and the replay of a recorded
pruning on every built-in backbone."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from chanloss.models import create_model
from chanloss.models.pruned import apply_structure, build_graph, check_record, prune_group
from chanloss.pruning.cpli import contribution_gram, greedy_scores, loss_term
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
    find_groups,
    keep_counts,
    make_record,
    plan_counts,
    prune_groups,
)
from chanloss.pruning.sequential import capture, refit_reader


def _randomise_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():  # non-trivial BN parameters and statistics
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _resnet(shortcut: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise_bn(create_model("resnet20", num_classes=5, shortcut=shortcut, width=0.5))


def _calibration(channels: int = 3, size: int = 8, batches: int = 2, classes: int = 5):
    g = torch.Generator().manual_seed(1)
    data = [
        (
            torch.randn(6, channels, size, size, generator=g),
            torch.randint(0, classes, (6,), generator=g),
        )
        for _ in range(batches)
    ]
    return Calibration(data, lambda model, x: model(x).logits)


EXAMPLE = torch.zeros(1, 3, 8, 8)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet20_groups_are_block_internals_and_whole_residual_streams(shortcut):
    model = _resnet(shortcut)
    groups = {g.root: g for g in find_groups(model, EXAMPLE)}
    assert len(groups) == 12  # 9 block-internal groups + 3 residual streams
    stream1 = groups["body.0"]
    writers = {w.name for w in stream1.writers}
    assert writers == {"body.0", "body.3.0.conv2", "body.3.1.conv2", "body.3.2.conv2"}
    readers = {r.name for r in stream1.readers}
    expected = {"body.3.0.conv1", "body.3.1.conv1", "body.3.2.conv1", "body.4.0.conv1"}
    if shortcut == "B":
        expected.add("body.4.0.shortcut.0")  # the projection reads stage 1's stream
    assert readers == expected
    stream3 = groups["body.5.0.conv2"]
    assert stream3.is_feature and "classifier" in {r.name for r in stream3.readers}
    assert [g.root for g in groups.values() if g.is_feature] == ["body.5.0.conv2"]
    inner = groups["body.4.1.conv1"]
    assert {r.name for r in inner.readers} == {"body.4.1.conv2"} and not inner.is_feature


def _zero_channels(model: nn.Module, norms: list[str], channels: list[int]) -> None:
    for name in norms:
        bn = model.get_submodule(name)
        bn.weight.data[channels] = 0
        bn.bias.data[channels] = 0


class _Logits(torch.nn.Module):
    """The class scores alone, as export traces them."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def test_option_a_shortcut_pruning_equals_zeroing_the_stream_channels():
    model = _resnet("A")
    x = torch.randn(4, 3, 8, 8)
    # stage-1 stream channels 1 and 5 (copied into stage 2 by the shortcut) and stage-2
    # channels 9 and 14 (zero padding in the original): a stream channel whose every writer's
    # BN is zero is zero everywhere, so removing it must not change the logits
    reference = copy.deepcopy(model)
    _zero_channels(reference, ["body.1", "body.3.0.bn2", "body.3.1.bn2", "body.3.2.bn2"], [1, 5])
    _zero_channels(reference, ["body.4.0.bn2", "body.4.1.bn2", "body.4.2.bn2"], [9, 14])
    graph = build_graph(model, EXAMPLE)
    prune_group(graph, model.get_submodule("body.0"), [1, 5])
    prune_group(graph, model.get_submodule("body.4.0.conv2"), [9, 14])
    shortcut = model.get_submodule("body.4.0.shortcut")
    assert (shortcut.in_channels, shortcut.out_channels) == (6, 14)
    # outputs 0..7 copy the kept inputs except the removed 1 and 5 (now zero channels)
    assert shortcut.index.tolist() == [0, 6, 1, 2, 3, 6, 4, 5, 6, 6, 6, 6, 6, 6]
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, reference(x).logits, rtol=1e-5, atol=1e-5)
    assert model.get_submodule("body.4.0.conv1").in_channels == 6
    traced = torch.jit.trace(_Logits(model), x, check_trace=False)  # what export runs
    torch.testing.assert_close(traced(x), reference(x).logits, rtol=1e-5, atol=1e-5)


def test_group_criteria_sum_per_channel_references_over_the_group():
    model = _resnet("B")
    group = next(g for g in find_groups(model, EXAMPLE) if g.root == "body.4.0.conv2")
    writers = ["body.4.0.conv2", "body.4.1.conv2", "body.4.2.conv2", "body.4.0.shortcut.0"]
    norms = ["body.4.0.bn2", "body.4.1.bn2", "body.4.2.bn2", "body.4.0.shortcut.1"]
    assert {w.name for w in group.writers} == set(writers)
    l1 = [
        sum(float(model.get_submodule(w).weight[c].detach().abs().sum()) for w in writers)
        for c in range(group.channels)
    ]
    torch.testing.assert_close(l1_importance(model, group), torch.tensor(l1, dtype=torch.float64))
    gamma = [
        sum(abs(float(model.get_submodule(n).weight[c])) for n in norms)
        for c in range(group.channels)
    ]
    torch.testing.assert_close(
        bn_scale_importance(model, group), torch.tensor(gamma, dtype=torch.float64)
    )
    # Taylor: (sum over the group's BN scales and shifts of g * p)^2 per batch, averaged
    calibration = _calibration()
    got = taylor_importance(model, [group], calibration)[group.root]
    reference = torch.zeros(group.channels, dtype=torch.float64)
    for x, y in calibration:
        model.zero_grad()
        (F.cross_entropy(model(x).logits, y, reduction="sum") / y.shape[0]).backward()
        for c in range(group.channels):
            total = 0.0
            for n in norms:
                bn = model.get_submodule(n)
                total += float(bn.weight.grad[c] * bn.weight[c] + bn.bias.grad[c] * bn.bias[c])
            reference[c] += total**2
    torch.testing.assert_close(got, reference / 2, rtol=1e-5, atol=1e-9)


def test_loss_term_is_the_loss_derivative_of_scaling_the_channel_at_each_reader():
    model = _resnet("A").double()
    group = next(g for g in find_groups(model, EXAMPLE.double()) if g.root == "body.0")
    calibration = _calibration(batches=1)
    calibration.batches = [(x.double(), y) for x, y in calibration.batches]
    seen = capture(model, group.readers, calibration, grad=True)
    s = loss_term(group, seen)
    x, y = calibration.batches[0]
    eps = 1e-6

    def loss_scaled(reader: str, c: int, e: float, n: int) -> float:
        def scale(m, args):
            t = args[0].clone()
            t[:, c] *= 1 + e
            return (t,)

        handle = model.get_submodule(reader).register_forward_pre_hook(scale)
        with torch.no_grad():
            value = float(
                F.cross_entropy(model(x[n : n + 1]).logits, y[n : n + 1], reduction="sum")
            )
        handle.remove()
        return value

    for c in (0, 3):
        reference = 0.0
        for reader in group.readers:
            for n in range(x.shape[0]):
                numeric = loss_scaled(reader.name, c, eps, n) - loss_scaled(reader.name, c, -eps, n)
                reference += abs(numeric / (2 * eps)) / x.shape[0]
        assert abs(float(s[c]) - reference) < 1e-5 * max(1.0, reference)


def test_contribution_gram_matches_per_channel_contributions():
    torch.manual_seed(0)
    model = _resnet("B")
    group = next(g for g in find_groups(model, EXAMPLE) if g.root == "body.4.1.conv1")
    calibration = _calibration()
    (item,) = capture(model, group.readers, calibration, grad=False)
    conv = item.module
    weights = torch.rand(conv.out_channels) + 0.5
    got = contribution_gram(item, group.channels, weights)
    # reference: Z[:, c] = the output of channel c alone through the reader, at the sampled
    # positions (the columns hold the reader's input there), weighted by sqrt(w_j)
    columns = []
    for cols in item.columns:
        per_channel = cols.reshape(cols.shape[0], conv.in_channels, 9, cols.shape[2])
        z = torch.stack(
            [
                torch.einsum("ok,bkp->bop", conv.weight[:, c].reshape(-1, 9), per_channel[:, c])
                * weights.sqrt()[None, :, None]
                for c in range(conv.in_channels)
            ]
        )
        columns.append(z.reshape(conv.in_channels, -1))
    z = torch.cat(columns, 1).double()
    reference = z @ z.t()
    torch.testing.assert_close(got, reference / torch.trace(reference), rtol=1e-6, atol=1e-9)


def test_greedy_scores_follow_the_greedy_removal_of_the_joint_objective():
    torch.manual_seed(0)
    z = torch.randn(40, 6, dtype=torch.float64)
    z[:, 5] = z[:, 0] * 1.01  # two redundant channels: one of them can go early
    gram = z.t() @ z
    loss = torch.rand(6, dtype=torch.float64)
    for mix in (0.0, 0.5, 1.0):
        scores = greedy_scores(loss, gram, mix)
        removed: list[int] = []
        for step in range(5):  # brute force: the objective of each candidate set

            def objective(channels: list[int], mix: float = mix) -> float:
                error = float(z[:, channels].sum(1).square().sum() / torch.trace(gram))
                return (1 - mix) * float(loss[channels].sum() / loss.sum()) + mix * error

            left = [c for c in range(6) if c not in removed]
            best = min(left, key=lambda c: objective([*removed, c]))
            removed.append(best)
            assert scores[best] == step
    # with the reconstruction alone, one of the two redundant channels is removed before the
    # other, although each alone carries a large share of the output energy
    only = greedy_scores(loss, gram, 1.0)
    assert min(only[0], only[5]) < max(only[0], only[5])


def test_refit_recovers_weights_and_matches_lstsq():
    torch.manual_seed(0)
    true = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    a = [torch.randn(8, 3, 6, 6) for _ in range(2)]
    cols = [F.unfold(x, 3, padding=1) for x in a]
    targets = [true(x).detach().flatten(2) for x in a]
    reader = nn.Conv2d(3, 4, 3, padding=1, bias=True)
    reader.bias.data.copy_(true.bias.data)
    refit_reader(reader, cols, targets, ridge=1e-10)
    torch.testing.assert_close(reader.weight, true.weight, rtol=1e-4, atol=1e-4)
    noisy = [t + 0.3 * torch.randn_like(t) for t in targets]
    refit_reader(reader, cols, noisy, ridge=1e-10)
    x = torch.cat([c.transpose(1, 2).reshape(-1, 27) for c in cols])
    t = torch.cat([(n - true.bias.view(1, -1, 1)).transpose(1, 2).reshape(-1, 4) for n in noisy])
    ref = torch.linalg.lstsq(x.double(), t.double().detach()).solution.t().reshape(4, 3, 3, 3)
    torch.testing.assert_close(reader.weight.double(), ref, rtol=1e-4, atol=1e-4)


def test_top_channels_overall_and_evenly_within_groups():
    importance = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.2, 0.8])
    assert top_channels(importance, 3, None) == [1, 2, 5]
    assert top_channels(importance, 4, [range(0, 3), range(3, 6)]) == [1, 2, 3, 5]


def test_budgets_round_to_multiples_reach_the_target_and_refuse_the_unreachable():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=5).eval()
    groups = [g for g in find_groups(model, EXAMPLE) if not g.is_feature]
    counts, before, planned = plan_counts(model, groups, 2.0, EXAMPLE, round_to=8, mc_classes=None)
    assert before / planned >= 2.0
    assert all(c % 8 == 0 and c > 0 for c in counts.values())
    free = plan_counts(model, groups, 2.0, EXAMPLE, round_to=1, mc_classes=None)[0]
    assert any(c % 8 for c in free.values())
    # the actual pruned copy has the planned MACs
    pruned = copy.deepcopy(model)
    prune_groups(pruned, {n: range(c) for n, c in counts.items()}, EXAMPLE, None)
    assert count_macs(pruned, EXAMPLE)[0] == planned
    assert keep_counts(groups, 0.5, 8, None)["body.0"] == 8
    with pytest.raises(PruneError, match=r"--speedup 50 is unreachable.*round_to=8.*smaller"):
        plan_counts(model, groups, 50.0, EXAMPLE, round_to=8, mc_classes=None)
    # global ranking: one threshold over mean-normalised scores, at least a tenth of a group
    scores = {g.root: torch.arange(g.channels, dtype=torch.float64) + 1 for g in groups}
    scores["body.0"] = scores["body.0"] * 0 + 1  # flat: equal to its mean
    counts = plan_counts(model, groups, 2.0, EXAMPLE, round_to=1, mc_classes=None, scores=scores)[0]
    pruned = copy.deepcopy(model)
    prune_groups(pruned, {n: range(c) for n, c in counts.items()}, EXAMPLE, None)
    assert before / count_macs(pruned, EXAMPLE)[0] >= 2.0
    assert all(counts[g.root] >= 0.1 * g.channels for g in groups)
    assert len(set(counts.values())) > 2  # not one ratio for all


BACKBONES = {
    "convnet_small": {"width": 8, "feature_channels": 16},
    "resnet20-A": {"name": "resnet20", "shortcut": "A", "width": 0.5},
    "resnet20-B": {"name": "resnet20", "shortcut": "B", "width": 0.5},
    "resnet56": {"width": 0.5},
    "resnet110": {"width": 0.25},
    "resnet18": {"small_input": True, "width": 0.25},
    "resnet50": {"small_input": True, "width": 0.25},
    "vgg16_bn": {"width": 0.125},
}


@pytest.mark.parametrize(("key", "speedup"), list(itertools.product(BACKBONES, (2.0, 4.0))))
def test_record_replays_the_group_pruning_on_every_backbone(key, speedup):
    opts = dict(BACKBONES[key])
    name = opts.pop("name", key)
    size = 32
    example = torch.zeros(1, 3, size, size)
    torch.manual_seed(0)
    model = _randomise_bn(create_model(name, num_classes=4, **opts))
    groups = [g for g in find_groups(model, example) if not g.is_feature or key == "convnet_small"]
    feature = next((g.root for g in groups if g.is_feature), None)
    counts = plan_counts(model, groups, speedup, example, round_to=1, mc_classes=None)[0]
    generator = torch.Generator().manual_seed(3)
    kept = {
        g.root: sorted(torch.randperm(g.channels, generator=generator)[: counts[g.root]].tolist())
        for g in groups
    }
    pruned = copy.deepcopy(model)
    prune_groups(pruned, kept, example, feature)
    record = check_record(make_record(groups, kept, example, "l1"))
    fresh = create_model(name, num_classes=4, **opts)
    apply_structure(fresh, record)
    fresh.load_state_dict(pruned.state_dict())
    fresh.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).logits, pruned(x).logits)
        macs = count_macs(model, example)[0] / count_macs(fresh, example)[0]
    assert macs >= speedup


def test_version_1_records_still_replay_and_unknown_versions_are_refused():
    model = create_model("convnet_small", num_classes=4, width=8, feature_channels=16)
    record = {
        "format": "chanloss-pruning",
        "version": 1,
        "method": "l1",
        "input_shape": [1, 3, 8, 8],
        "layers": [{"name": "body.3", "total": 8, "kept": [0, 2, 5]}],
        "feature_layer": None,
    }
    apply_structure(model, record)
    assert model.get_submodule("body.3").out_channels == 3
    with pytest.raises(ValueError, match=r"version 7, expected one of 1, 2 \(prune the original"):
        check_record({**record, "version": 7})


class _GatedNet(nn.Module):
    """A user's network: two conv-BN-ReLU layers, a squeeze-excitation gate (Linear layers)
    between the feature map and the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        )  # fmt: skip
        self.gate = nn.Sequential(nn.Linear(24, 6), nn.ReLU(), nn.Linear(6, 24), nn.Sigmoid())
        self.fc = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        f = f * self.gate(f.mean((2, 3)))[:, :, None, None]
        return self.fc(f.mean((2, 3)))


def test_a_feature_tap_model_with_a_channel_gate_prunes_and_replays():
    from chanloss.models.tap import FeatureTap

    def build() -> nn.Module:
        torch.manual_seed(0)
        return FeatureTap(_GatedNet(), layer="features", classifier="fc").eval()

    model = build()
    groups = {g.root: g for g in find_groups(model, EXAMPLE)}
    assert set(groups) == {"model.features.0", "model.features.3"}
    inner, feature = groups["model.features.0"], groups["model.features.3"]
    assert not inner.is_feature and {r.name for r in inner.readers} == {"model.features.3"}
    # the gate reads the feature map and writes a scale per channel: both follow the pruning
    assert feature.is_feature
    assert {r.name for r in feature.readers} == {"model.gate.0", "model.fc"}
    assert {w.name for w in feature.writers} == {"model.features.3", "model.gate.2"}
    kept = {"model.features.0": [0, 3, 4, 9, 15], "model.features.3": list(range(0, 24, 3))}
    pruned = copy.deepcopy(model)
    prune_groups(pruned, kept, EXAMPLE, "model.features.3")
    assert pruned.model.gate[2].out_features == 8 and pruned.model.fc.in_features == 8
    fresh = build()
    apply_structure(fresh, make_record(list(groups.values()), kept, EXAMPLE, "l1"))
    fresh.load_state_dict(pruned.state_dict())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).logits, pruned(x).logits)
        assert pruned(x).features.shape[1] == 8
