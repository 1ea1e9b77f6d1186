"""CC-Loss's gate placement (issue 30): the SE gate in the forward path of every backbone and a
FeatureTap model, the ratio form on the gate's attention against a per-pair reference, the
automatic gate, old side-branch checkpoints and the error paths a user meets."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from references import reference_ratio
from tiny_config import TINY
from torch import nn

from chanloss.cli import main
from chanloss.config import load_config
from chanloss.losses import CCLoss, create_loss, loss_spec
from chanloss.losses.search import Choice, LogUniform
from chanloss.models import MODELS, FeatureTap, create_model
from chanloss.models.gate import SEGate, add_channel_gate, gate_of
from chanloss.run.session import train

# one small case per backbone: name, options, input (C, H, W)
BACKBONES = [
    ("resnet20", {"width": 0.25}, (3, 16, 16)),
    ("resnet56", {"width": 0.25}, (3, 16, 16)),
    ("resnet110", {"width": 0.25}, (3, 16, 16)),
    ("vgg16_bn", {"width": 0.125}, (3, 32, 32)),
    ("resnet18", {"width": 0.125, "small_input": True}, (3, 16, 16)),
    ("resnet50", {"width": 0.125, "small_input": True}, (3, 16, 16)),
    ("convnet_small", {"width": 4, "feature_channels": 12}, (1, 8, 8)),
]


def test_every_backbone_is_covered():
    assert {name for name, *_ in BACKBONES} == set(MODELS)


@pytest.mark.parametrize(("name", "opts", "shape"), BACKBONES, ids=[b[0] for b in BACKBONES])
def test_gate_in_every_backbone_forward_state_dict_and_head_input(name, opts, shape):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, in_channels=shape[0], channel_gate="se", **opts)
    model.eval()
    x = torch.rand(3, *shape)
    out = model(x)
    c = model.num_features
    assert isinstance(model.gate, SEGate) and out.attention.shape == (3, c)
    assert bool(((out.attention >= 0) & (out.attention <= 1)).all())
    # the head reads F * (2 a): the logits from the gated features, by hand
    a = torch.sigmoid(model.gate.fc2(torch.relu(model.gate.fc1(out.features.mean(dim=(2, 3))))))
    torch.testing.assert_close(out.attention, a)
    expected = model.classifier(model.head(out.features * (2 * a)[:, :, None, None]))
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(model.forward_head(out.features), expected)
    # saved and loaded with the model
    keys = {k for k in model.state_dict() if k.startswith("gate.")}
    assert keys == {"gate.fc1.weight", "gate.fc1.bias", "gate.fc2.weight", "gate.fc2.bias"}
    torch.manual_seed(1)
    other = create_model(name, num_classes=4, in_channels=shape[0], channel_gate="se", **opts)
    other.load_state_dict(model.state_dict())
    other.eval()
    torch.testing.assert_close(other(x).logits, out.logits)
    plain = create_model(name, num_classes=4, in_channels=shape[0], **opts)
    assert plain(x).attention is None and gate_of(plain) is None
    with pytest.raises(RuntimeError, match="gate"):
        plain.load_state_dict(model.state_dict())


def test_gate_on_a_feature_tap_model_replaces_the_tapped_output():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    tap = FeatureTap(net, layer="1", classifier="4")
    tap.infer_dims((1, 1, 8, 8))
    add_channel_gate(tap)
    x = torch.rand(2, 1, 8, 8)
    out = tap(x)
    f = torch.relu(net[0](x))
    torch.testing.assert_close(out.features, f)
    a = tap.gate.attention(f)
    torch.testing.assert_close(out.attention, a)
    gated = (f * (2 * a)[:, :, None, None]).mean(dim=(2, 3))
    torch.testing.assert_close(out.embedding, gated)
    torch.testing.assert_close(out.logits, net[4](gated))
    assert "gate.fc1.weight" in tap.state_dict()
    with pytest.raises(ValueError, match="already has a channel gate"):
        add_channel_gate(tap)


def test_gate_on_a_model_without_a_4d_feature_map_names_what_to_change():
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))
    tap = FeatureTap(net, layer="2")  # a (B, D) output, not a feature map
    tap.num_features = 8
    add_channel_gate(tap)
    with pytest.raises(ValueError, match=r"channel gate needs a \(B, C, H, W\) feature map"):
        tap(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="built-in backbone or a FeatureTap"):
        add_channel_gate(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="channel_gate must be one of"):
        create_model("convnet_small", num_classes=3, channel_gate="cbam")


@pytest.mark.parametrize("pair_reduction", ["mean", "sum"])
def test_ratio_on_gate_attention_matches_the_per_pair_reference(pair_reduction):
    torch.manual_seed(0)
    a = torch.rand(9, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 2, 1, 1, 0, 2, 3])
    loss = CCLoss(num_channels=6, pair_reduction=pair_reduction)
    assert loss.placement == "gate" and loss.consumes == "attention"
    got = loss.terms(a, y)["cc"]
    torch.testing.assert_close(got, reference_ratio(a, y, pair_reduction, 1e-6))
    assert loss(a, y).item() == pytest.approx(0.01 * got.item())  # default weight 0.01


def test_gradcheck_ratio_through_the_gate_in_float64():
    torch.manual_seed(0)
    gate = SEGate(5, reduction=1).double()
    loss = CCLoss(num_channels=5)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    f = torch.rand(6, 5, 2, 3, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in gate.named_parameters()]

    def fn(f, *ps):
        _, a = torch.func.functional_call(gate, dict(zip(names, ps, strict=True)), (f,))
        return loss.terms(a, y)["cc"]

    inputs = (f, *[p.detach().clone().requires_grad_() for p in gate.parameters()])
    assert torch.autograd.gradcheck(fn, inputs)
    a = torch.rand(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: loss.terms(a, y)["cc"], (a,))


def test_gate_placement_rejects_a_missing_attention_and_bad_shapes():
    loss = CCLoss(num_channels=4)
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="model has no gate; set model.channel_gate: se"):
        loss.terms(None, y)
    with pytest.raises(ValueError, match=r"attention must have 2 dimensions \(B, C\)"):
        loss.terms(torch.rand(2, 4, 1, 1), y)
    with pytest.raises(ValueError, match="attention must have size 4 in dimension 1"):
        loss.terms(torch.rand(2, 5), y)
    with pytest.raises(ValueError, match="owns no attention"):
        loss.attention(torch.rand(2, 4, 2, 2))


def test_search_space_covers_placement_form_and_weight():
    space = loss_spec("cc").search_space
    assert space["placement"] == Choice(("gate", "branch"))
    assert set(space["form"].values) == {"ratio", "margin", "softplus", "cosine"}
    assert space["weight"] == LogUniform(0.01, 10.0)
    branch = create_loss("cc", context={"num_channels": 8, "num_classes": 3}, placement="branch")
    assert branch.consumes == "features" and list(branch.parameters())


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def _tiny(**changes) -> dict:
    raw = copy.deepcopy(TINY)
    raw.update(changes)
    return raw


def test_cc_with_the_default_placement_gets_the_gate_automatically(tmp_path):
    raw = _tiny(losses=[{"name": "ce"}, {"name": "cc"}])
    train(load_config(raw=raw), tmp_path / "run", verbose=0)
    state = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert "gate.fc1.weight" in state["model"] and state["losses"][1] == {}
    assert state["config"]["losses"][1]["placement"] == "gate"
    control = _tiny(model={**TINY["model"], "channel_gate": "se"})  # CE + SE gate, no CC
    train(load_config(raw=control), tmp_path / "se", verbose=0)
    se = torch.load(tmp_path / "se" / "last.pt", map_location="cpu", weights_only=True)
    assert se["model"].keys() == state["model"].keys()


def test_cli_gate_placement_with_channel_gate_none_is_one_line_exit_2(tmp_path, capsys):
    raw = _tiny(
        model={**TINY["model"], "channel_gate": "none"}, losses=[{"name": "ce"}, {"name": "cc"}]
    )
    cfg = _write(tmp_path / "c.yaml", raw)
    assert main(["train", "-c", str(cfg), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "placement: gate reads the model's channel gate" in err
    assert "losses.1.placement: branch" in err
    assert not (tmp_path / "r" / "last.pt").exists()


def _old_branch_checkpoint(tmp_path: Path) -> Path:
    """A run of the side-branch CC-Loss whose checkpoint looks as the code before the gate
    wrote it: its stored config names every CC parameter but ``placement``."""
    raw = _tiny(losses=[{"name": "ce"}, {"name": "cc", "placement": "branch", "form": "margin"}])
    run = tmp_path / "old"
    train(load_config(raw=raw), run, verbose=0)
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / name, map_location="cpu", weights_only=True)
        del state["config"]["losses"][1]["placement"]
        torch.save(state, run / name)
    stored = yaml.safe_load((run / "config.yaml").read_text())
    del stored["losses"][1]["placement"]
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    return run


def test_old_side_branch_checkpoint_loads_and_evaluates(tmp_path, capsys):
    run = _old_branch_checkpoint(tmp_path)
    assert main(["eval", str(run / "last.pt"), "--out", str(tmp_path / "ev")]) == 0
    result = json.loads((tmp_path / "ev" / "test" / "eval.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert result["top1"] == pytest.approx(summary["final_test_acc"], abs=1e-6)
    import chanloss

    model = chanloss.load_model(run / "last.pt")
    assert gate_of(model.model if hasattr(model, "model") else model) is None


def test_resuming_an_old_checkpoint_with_todays_default_is_one_line_exit_2(tmp_path, capsys):
    run = _old_branch_checkpoint(tmp_path)
    new = _write(tmp_path / "new.yaml", _tiny(epochs=2, losses=[{"name": "ce"}, {"name": "cc"}]))
    assert main(["train", "-c", str(new), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "placement" in err
    assert "'branch'" in err and "'gate'" in err


def test_gated_run_exports_with_its_gate(tmp_path):
    from chanloss.inference import export_model, load_model

    raw = _tiny(losses=[{"name": "ce"}, {"name": "cc", "weight": 0.1}])
    train(load_config(raw=raw), tmp_path / "run", verbose=0)
    model = load_model(tmp_path / "run" / "last.pt")
    path = export_model(tmp_path / "run" / "last.pt", tmp_path / "m.pt")
    scripted = torch.jit.load(str(path))
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
    state = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():  # the exported scores change with the gate's weights
        state["model"]["gate.fc2.bias"] += 3.0
    torch.save(state, tmp_path / "run" / "moved.pt")
    with torch.no_grad():
        assert not torch.allclose(load_model(tmp_path / "run" / "moved.pt")(x), model(x))


def test_added_gate_takes_the_loss_reduction_unless_the_model_gives_one():
    from chanloss.run.builders import build_model

    def hidden(model_opts: dict, cc: dict) -> int:
        raw = _tiny(model={**TINY["model"], **model_opts}, losses=[{"name": "ce"}, cc])
        gate = build_model(load_config(raw=raw), num_classes=10, in_channels=1).gate
        assert gate.fc1.out_features == gate.fc2.in_features == gate.hidden  # the layers too
        return gate.hidden

    assert hidden({}, {"name": "cc"}) == 4  # 20 // 16 = 1, raised to the floor of 4
    assert hidden({}, {"name": "cc", "reduction": 4}) == 5
    assert hidden({"gate_reduction": 2}, {"name": "cc", "reduction": 4}) == 10
    assert hidden({"channel_gate": "se"}, {"name": "cc", "placement": "branch"}) == 4


def test_gate_is_counted_in_macs_and_parameters():
    from chanloss.pruning.graph import count_macs

    opts = {"num_classes": 4, "in_channels": 1, "width": 4, "feature_channels": 12}
    plain = create_model("convnet_small", **opts).eval()
    gated = create_model("convnet_small", channel_gate="se", gate_reduction=3, **opts).eval()
    x = torch.rand(1, 1, 8, 8)
    (macs_plain, params_plain), (macs_gated, params_gated) = (
        count_macs(plain, x),
        count_macs(gated, x),
    )
    assert params_gated - params_plain == 12 * 4 + 4 + 4 * 12 + 12  # fc1 and fc2 of the gate
    assert macs_gated - macs_plain >= 2 * 12 * 4  # at least the two Linear layers
