"""``chanloss prune`` end to end on a tiny digits run: every method, the files it writes, every
command on the pruned checkpoint, and each bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_config import TINY
from torch import nn

import chanloss
from chanloss.cli import main
from chanloss.models.common import Backbone, build_head
from chanloss.models.registry import MODELS, register_model
from chanloss.training import load_checkpoint, save_checkpoint, train, validate_config

MODEL = {"name": "convnet_small", "width": 6, "feature_channels": 20, "pools": 1}


def _train(base: Path, name: str, model: dict, losses: list) -> Path:
    raw = {
        **TINY,
        "model": model,
        "losses": losses,
        "data": {"name": "digits", "val_fraction": 0.1},
        "epochs": 1,
    }
    train(validate_config(raw), base / name, verbose=0)
    return base / name / "last.pt"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("prune")
    return {
        "mc": _train(base, "mc", MODEL, [{"name": "ce"}, {"name": "mc"}]),
        "cc": _train(
            base,
            "cc",
            MODEL,
            [{"name": "ce"}, {"name": "cc", "placement": "branch", "reduction": 4}],
        ),
    }


def one_error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [x for x in captured.err.splitlines() if not x.startswith("chanloss: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("chanloss: error: "), captured.err
    return lines[0]


@pytest.mark.parametrize("method", ["cpli", "l1", "bn_scale", "taylor", "random"])
def test_every_method_halves_the_macs(runs, tmp_path, method, capsys):
    out = tmp_path / method
    assert main(["prune", str(runs["mc"]), "--out", str(out), "--method", method]) == 0
    printed = capsys.readouterr().out
    assert f"{method}: " in printed and "fewer MACs (target 2x)" in printed
    assert "layer 3/3 body.7: kept" in printed  # a progress line per layer
    result = json.loads((out / "prune.json").read_text())
    assert result["macs"]["before"] / result["macs"]["after"] >= 2.0
    assert result["params"]["after"] < result["params"]["before"]
    assert [x["name"] for x in result["layers"]] == ["body.0", "body.3", "body.7"]  # no features
    assert all(0 < x["kept"] < x["total"] for x in result["layers"])
    for stage in ("original", "pruned"):
        assert 0 <= result["accuracy"][stage]["val"] <= 1
        assert 0 <= result["accuracy"][stage]["test"] <= 1
    assert result["accuracy"]["finetuned"] is None
    assert set(result["latency_ms"]["after"]) == {"batch1", "batch64"}
    assert (result["cpli_mix"] is not None) == (method == "cpli")
    # the checkpoint is plain data, and it records the kept channels
    with zipfile.ZipFile(out / "pruned.pt") as archive:
        pickled = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        assert b"torch.nn.modules" not in archive.read(pickled)
    state = load_checkpoint(out / "pruned.pt")
    kept = {x["name"]: len(x["kept"]) for x in state["pruning"]["layers"]}
    assert kept == {x["name"]: x["kept"] for x in result["layers"]}
    assert state["model"]["body.0.weight"].shape[0] == kept["body.0"]


def test_methods_keep_their_own_choice_of_channels(runs, tmp_path):
    from chanloss.pruning import prune_checkpoint

    chosen = {}
    for method in ("l1", "bn_scale"):
        prune_checkpoint(runs["mc"], tmp_path / method, method=method, verbose=False)
        record = load_checkpoint(tmp_path / method / "pruned.pt")["pruning"]
        chosen[method] = record["layers"][1]["kept"]
    weights = load_checkpoint(runs["mc"])["model"]
    count = len(chosen["l1"])
    l1 = weights["body.3.weight"].abs().sum((1, 2, 3))
    gamma = weights["body.4.weight"].abs()
    assert chosen["l1"] == sorted(torch.argsort(-l1, stable=True)[:count].tolist())
    assert chosen["bn_scale"] == sorted(torch.argsort(-gamma, stable=True)[:count].tolist())


def test_features_finetune_and_every_command_on_the_pruned_checkpoint(runs, tmp_path, capsys):
    out = tmp_path / "p"
    argv = ["prune", str(runs["mc"]), "--out", str(out), "--speedup", "2.5", "--prune-features"]
    argv += ["--finetune-epochs", "1", "--set", "optim.lr=0.01", "--set", "prune.mix=0.5"]
    assert main(argv) == 0
    capsys.readouterr()
    result = json.loads((out / "prune.json").read_text())
    feature = result["layers"][-1]
    assert feature["name"] == "body.10" and feature["kept"] % 10 == 0 and feature["kept"] < 20
    assert result["cpli_mix"] == 0.5 and result["pruned_features"]
    assert 0 <= result["accuracy"]["finetuned"]["test"] <= 1
    ckpt = out / "pruned.pt"
    state = load_checkpoint(ckpt)
    assert state["config"]["optim"]["lr"] == 0.01 and state["epoch"] == 1
    # the MC groups after pruning: the same number of channels for every class
    assert state["model"]["classifier.weight"].shape[1] == feature["kept"]

    model = chanloss.load_model(ckpt)
    x = torch.rand(2, 1, 8, 8)
    assert model(x).shape == (2, 10)
    assert main(["eval", str(ckpt), "--out", str(tmp_path / "ev")]) == 0
    top1 = json.loads((tmp_path / "ev" / "test" / "eval.json").read_text())["top1"]
    assert top1 == pytest.approx(result["accuracy"]["finetuned"]["test"])
    image = tmp_path / "seven.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8)) * 255).astype(np.uint8)).save(image)
    assert main(["predict", str(ckpt), str(image)]) == 0
    assert main(["export", str(ckpt), "--out", str(tmp_path / "m.torchscript.pt")]) == 0
    exported = torch.jit.load(str(tmp_path / "m.torchscript.pt"))
    torch.testing.assert_close(exported(x), model(x))
    assert main(["analyze", str(ckpt), "--out", str(tmp_path / "an"), "--max-samples", "40"]) == 0
    capsys.readouterr()
    # more fine-tuning: the fine-tune run resumes from its last.pt, structure included
    tune = out / "finetune"
    assert main(["train", "--out", str(tune), "--resume", "--set", "epochs=2", "-q"]) == 0
    assert load_checkpoint(tune / "last.pt")["epoch"] == 2
    assert load_checkpoint(tune / "last.pt")["pruning"] == state["pruning"]


def test_cc_attention_is_resliced_with_the_features(runs, tmp_path):
    from chanloss.pruning import prune_checkpoint

    prune_checkpoint(runs["cc"], tmp_path / "cc", method="l1", prune_features=True, verbose=False)
    state = load_checkpoint(tmp_path / "cc" / "pruned.pt")
    record = state["pruning"]
    kept = record["layers"][-1]["kept"]
    before = load_checkpoint(runs["cc"])["losses"][1]
    after = state["losses"][1]
    assert after["fc1.weight"].shape[1] == after["fc2.weight"].shape[0] == len(kept)
    assert after["fc1.weight"].shape[0] == max(4, len(kept) // 4)  # the loss's own formula
    torch.testing.assert_close(after["fc2.bias"], before["fc2.bias"][kept])
    chanloss.load_model(tmp_path / "cc" / "pruned.pt")  # loads: shapes fit the config


class _OneConv(Backbone):
    def __init__(self, *, num_classes: int, in_channels: int) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU())
        self._finish(4, build_head("gap", 4, hidden=0, spatial=None))


@pytest.fixture
def one_conv_model():
    """A model whose only convolution is its feature layer, registered for one test only."""
    register_model("test_prune_one_conv")(lambda **kw: _OneConv(**kw))
    yield
    MODELS.pop("test_prune_one_conv")


def test_bad_inputs_are_one_line_and_write_nothing(runs, tmp_path, capsys, one_conv_model):
    good = str(runs["mc"])
    out = tmp_path / "never"
    cases = [
        (["--speedup", "1"], "--speedup must be a number > 1"),
        (["--speedup", "0.5"], "--speedup must be a number > 1"),
        (["--speedup", "nan"], "--speedup must be a number > 1"),
        (["--speedup", "500"], "--speedup 500 is unreachable"),
        (["--method", "magic"], "unknown --method 'magic'; expected one of cpli, l1"),
        (["--set", "prune.colour=1"], "unknown pruning option"),
        (["--set", "prune.mix=2"], "prune.mix must be a number in [0, 1]"),
        (["--set", "optim.lr=-1"], "lr"),
        (["--finetune-epochs", "-1"], "--finetune-epochs"),
    ]
    for extra, message in cases:
        line = one_error_line(capsys, ["prune", good, "--out", str(out), *extra])
        assert message in line, (extra, line)
        assert not out.exists()

    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    line = one_error_line(capsys, ["prune", str(other), "--out", str(out)])
    assert "not a chanloss checkpoint" in line
    save_checkpoint({"model": {}}, tmp_path / "no_config.pt")
    line = one_error_line(capsys, ["prune", str(tmp_path / "no_config.pt"), "--out", str(out)])
    assert "no_config.pt holds no config" in line
    config_only = {k: v for k, v in load_checkpoint(runs["mc"]).items() if k in ("config", "meta")}
    save_checkpoint(config_only, tmp_path / "no_weights.pt")
    line = one_error_line(capsys, ["prune", str(tmp_path / "no_weights.pt"), "--out", str(out)])
    assert "is not a run's checkpoint (no model and loss weights)" in line
    line = one_error_line(capsys, ["prune", str(tmp_path / "absent.pt"), "--out", str(out)])
    assert "checkpoint not found" in line
    assert not out.exists()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep")
    line = one_error_line(capsys, ["prune", good, "--out", str(busy)])
    assert "not an empty directory" in line
    assert sorted(p.name for p in busy.iterdir()) == ["mine.txt"]

    # MC-Loss with one channel per class: the feature layer cannot keep the groups
    base = tmp_path / "runs"
    narrow = _train(
        base, "narrow", {**MODEL, "feature_channels": 10}, [{"name": "ce"}, {"name": "mc"}]
    )
    line = one_error_line(capsys, ["prune", str(narrow), "--out", str(out), "--prune-features"])
    assert "fewer than 2 per class group" in line
    # a loss with per-embedding state cannot follow pruned features
    center = _train(base, "center", MODEL, [{"name": "ce"}, {"name": "center"}])
    line = one_error_line(capsys, ["prune", str(center), "--out", str(out), "--prune-features"])
    assert "loss 'center' keeps per-channel or per-embedding state" in line
    # a ResNet's feature layer is tied to the residual sums
    resnet = _train(base, "resnet", {"name": "resnet20", "width": 0.25}, [{"name": "ce"}])
    line = one_error_line(capsys, ["prune", str(resnet), "--out", str(out), "--prune-features"])
    assert "feature layer" in line and "cannot be pruned" in line
    # a model whose only convolution is the feature layer: nothing to prune without it
    lone = _train(base, "lone", {"name": "test_prune_one_conv"}, [{"name": "ce"}])
    line = one_error_line(capsys, ["prune", str(lone), "--out", str(out)])
    assert "has no prunable layer" in line and "--prune-features" in line
    # a pruned checkpoint is not pruned again
    assert main(["prune", good, "--out", str(tmp_path / "once"), "--method", "l1", "-q"]) == 0
    line = one_error_line(
        capsys, ["prune", str(tmp_path / "once" / "pruned.pt"), "--out", str(out)]
    )
    assert "already pruned" in line
    assert not out.exists()
