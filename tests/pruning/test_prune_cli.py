"""``chanloss prune`` end to end on a tiny digits run: every method, the files it writes, every
command on the pruned checkpoint, and each bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import shlex
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ctrl_c import CtrlCLoss
from PIL import Image
from tiny_config import TINY
from torch import nn

import chanloss
from chanloss.cli import main
from chanloss.config import validate_config
from chanloss.models.common import Backbone, build_head
from chanloss.models.registry import MODELS, register_model
from chanloss.run.checkpoint import load_checkpoint, save_checkpoint
from chanloss.run.session import train

MODEL = {"name": "convnet_small", "width": 16, "feature_channels": 20, "pools": 1}


def _train(base: Path, name: str, model: dict, losses: list) -> Path:
    raw = {
        **TINY,
        "model": model,
        "losses": losses,
        "data": {"name": "digits", "val_fraction": 0.1},
        "optim": {"lr": 0.1},
        "epochs": 4,
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
    assert f"{method}{' + refit' if method == 'cpli' else ''}: " in printed
    assert "fewer MACs (target 2x)" in printed
    assert "group 3/3 body.7 (" in printed  # a progress line per group
    assert "measured speed-up at " in printed
    assert f"wrote {out / 'pruned.pt'} " in printed
    result = json.loads((out / "prune.json").read_text())
    assert result["macs"]["before"] / result["macs"]["after"] >= 2.0
    assert result["params"]["after"] < result["params"]["before"]
    assert [g["root"] for g in result["groups"]] == ["body.0", "body.3", "body.7"]  # no features
    assert all(0 < g["kept"] <= g["total"] and g["kept"] % 8 == 0 for g in result["groups"])
    assert result["refit"] == (method == "cpli") and result["round_to"] == 8
    for stage in ("original", "pruned", "kept"):
        assert 0 <= result["accuracy"][stage]["val"] <= 1
        assert 0 <= result["accuracy"][stage]["test"] <= 1
    assert result["accuracy"]["finetuned"] is None
    assert result["kept"]["which"] == "right after pruning"
    latency = result["latency_ms"]
    assert set(latency["after"]) == set(latency["speedup"]) == {"batch1", "batch64"}
    ratio = latency["before"]["batch64"] / latency["after"]["batch64"]
    assert latency["speedup"]["batch64"] == pytest.approx(ratio)
    assert latency["threads"] == torch.get_num_threads()
    assert (result["cpli_mix"] is not None) == (method == "cpli")
    # the checkpoint is plain data, and it records the kept channels of each group
    with zipfile.ZipFile(out / "pruned.pt") as archive:
        pickled = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        assert b"torch.nn.modules" not in archive.read(pickled)
    state = load_checkpoint(out / "pruned.pt")
    kept = {x["name"]: len(x["kept"]) for x in state["pruning"]["layers"]}
    assert kept == {g["root"]: g["kept"] for g in result["groups"]}
    assert state["model"]["body.0.weight"].shape[0] == kept["body.0"]
    assert state["pruning"]["version"] == 2


def test_methods_keep_their_own_choice_of_channels(runs, tmp_path):
    from chanloss.pruning import prune_checkpoint

    chosen = {}
    options = ["prune.round_to=1"]
    for method in ("l1", "bn_scale"):
        prune_checkpoint(
            runs["mc"], tmp_path / method, method=method, overrides=options, verbose=False
        )
        record = load_checkpoint(tmp_path / method / "pruned.pt")["pruning"]
        chosen[method] = record["layers"][1]["kept"]
    weights = load_checkpoint(runs["mc"])["model"]
    count = len(chosen["l1"])
    l1 = weights["body.3.weight"].abs().sum((1, 2, 3))
    gamma = weights["body.4.weight"].abs()
    assert chosen["l1"] == sorted(torch.argsort(-l1, stable=True)[:count].tolist())
    assert chosen["bn_scale"] == sorted(torch.argsort(-gamma, stable=True)[:count].tolist())


def test_refit_is_a_switch_for_every_criterion(runs, tmp_path):
    from chanloss.pruning import prune_checkpoint

    states = {}
    for refit in (False, True):
        out = tmp_path / f"l1-{refit}"
        result = prune_checkpoint(runs["mc"], out, method="l1", refit=refit, verbose=False)
        assert result["refit"] is refit
        states[refit] = load_checkpoint(out / "pruned.pt")
    plain, refitted = states[False], states[True]
    assert plain["pruning"]["layers"] == refitted["pruning"]["layers"]  # the same channels
    # the layers that read a pruned group get new weights; the first convolution does not
    torch.testing.assert_close(plain["model"]["body.0.weight"], refitted["model"]["body.0.weight"])
    assert not torch.allclose(plain["model"]["body.3.weight"], refitted["model"]["body.3.weight"])
    result = prune_checkpoint(runs["mc"], tmp_path / "c", refit=False, verbose=False)
    assert result["refit"] is False and result["method"] == "cpli"


@pytest.mark.parametrize("method", ["cpli", "taylor"])
def test_global_ranking_gives_groups_their_own_widths(runs, tmp_path, method):
    from chanloss.pruning import prune_checkpoint

    options = ["prune.global=true", "prune.round_to=1", "prune.mix=0.5"]
    result = prune_checkpoint(
        runs["mc"], tmp_path / method, method=method, overrides=options, verbose=False
    )
    assert result["global"] is True and result["speedup"] >= 2.0
    ratios = {g["root"]: g["kept"] / g["total"] for g in result["groups"]}
    assert all(r >= 0.1 for r in ratios.values())
    uniform = prune_checkpoint(
        runs["mc"], tmp_path / "u", method=method, overrides=options[1:], verbose=False
    )
    assert [g["kept"] for g in uniform["groups"]] != [g["kept"] for g in result["groups"]]
    chanloss.load_model(tmp_path / method / "pruned.pt")


def test_features_finetune_and_every_command_on_the_pruned_checkpoint(runs, tmp_path, capsys):
    out = tmp_path / "p"
    argv = ["prune", str(runs["mc"]), "--out", str(out), "--speedup", "2.5", "--prune-features"]
    argv += ["--finetune-epochs", "1", "--set", "prune.mix=0.5", "--set", "prune.round_to=1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "prune.json").read_text())
    feature = result["groups"][-1]
    assert feature["root"] == "body.10" and feature["feature"]
    assert feature["kept"] % 10 == 0 and feature["kept"] < 20
    assert result["cpli_mix"] == 0.5 and result["pruned_features"]
    assert result["finetune_lr"] == pytest.approx(0.01)  # a tenth of the run's lr
    kept = result["kept"]
    assert f"kept: {kept['which']} (" in printed
    ckpt = out / "pruned.pt"
    state = load_checkpoint(ckpt)
    assert state["config"]["optim"]["lr"] == pytest.approx(0.01)
    assert state["config"]["schedule"]["warmup_epochs"] == 0
    assert state["epoch"] == kept["epoch"]
    # the MC groups after pruning: the same number of channels for every class
    assert state["model"]["classifier.weight"].shape[1] == feature["kept"]

    model = chanloss.load_model(ckpt)
    x = torch.rand(2, 1, 8, 8)
    assert model(x).shape == (2, 10)
    assert main(["eval", str(ckpt), "--out", str(tmp_path / "ev")]) == 0
    top1 = json.loads((tmp_path / "ev" / "test" / "eval.json").read_text())["top1"]
    assert top1 == pytest.approx(result["accuracy"]["kept"]["test"])
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


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_finetune_never_hands_back_a_worse_model(runs, tmp_path, capsys):
    # a learning rate that wrecks the model: pruned.pt stays the model right after pruning
    out = tmp_path / "wrecked"
    argv = ["prune", str(runs["mc"]), "--out", str(out), "--method", "l1"]
    argv += ["--finetune-epochs", "2", "--set", "prune.finetune_lr=10"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "prune.json").read_text())
    assert result["kept"]["which"] == "right after pruning"
    assert "no fine-tune epoch beat its validation accuracy" in result["kept"]["why"]
    assert "kept: right after pruning (no fine-tune epoch beat" in printed
    assert "fine-tuning 2 epoch(s) at lr 10 from the model right after pruning" in printed
    assert result["finetune_lr"] == 10
    curve = result["accuracy"]["finetuned"]["val_curve"]
    assert len(curve) == 2 and max(curve) <= result["after_pruning_val"]
    after, kept = _weights(out / "after_pruning.pt"), _weights(out / "pruned.pt")
    assert all(torch.equal(after[k], kept[k]) for k in after)
    assert result["accuracy"]["kept"] == result["accuracy"]["pruned"]
    # a sane one: whichever is kept has the best validation accuracy of all candidates
    out = tmp_path / "sane"
    argv = ["prune", str(runs["mc"]), "--out", str(out), "--method", "l1"]
    assert main([*argv, "--finetune-epochs", "2", "-q"]) == 0
    result = json.loads((out / "prune.json").read_text())
    candidates = [result["after_pruning_val"], *result["accuracy"]["finetuned"]["val_curve"]]
    assert result["kept"]["val"] == max(candidates)
    assert result["kept"]["epoch"] == candidates.index(max(candidates))
    assert load_checkpoint(out / "pruned.pt")["epoch"] == result["kept"]["epoch"]


def test_a_second_prune_into_a_locked_out_is_refused(runs, tmp_path, capsys):
    from chanloss.run.run_dir import RunDir

    out = tmp_path / "shared"
    first = RunDir(out).acquire()  # what a prune running into --out holds
    try:
        line = one_error_line(capsys, ["prune", str(runs["mc"]), "--out", str(out)])
    finally:
        first.release()
    assert str(out) in line and "pid" in line
    assert not (out / "prune.json").exists() and not (out / "pruned.pt").exists()
    assert main(["prune", str(runs["mc"]), "--out", str(out), "--method", "l1", "-q"]) == 0


@pytest.mark.usefixtures("ctrl_c_loss")
def test_ctrl_c_during_finetune_then_the_printed_command_finishes_it(tmp_path, capsys):
    run = _train(tmp_path, "r", MODEL, [{"name": "ce"}, {"name": "test_ctrl_c"}])
    out = tmp_path / "p"
    CtrlCLoss.AT = [3]  # inside the first fine-tune epoch
    argv = ["prune", str(run), "--out", str(out), "--method", "l1", "--finetune-epochs", "2"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "; resume by running the same command again: " in err, err
    again = shlex.split(err.split("; resume by running the same command again: ", 1)[1])
    assert again[:3] == [sys.executable, "-m", "chanloss"] and again[3] == "prune"
    assert not (out / "prune.json").exists() and (out / "prune.partial.json").exists()
    CtrlCLoss.AT = []
    assert main(again[3:]) == 0
    printed = capsys.readouterr().out
    assert "holds this prune, unfinished: continuing its fine-tune" in printed
    result = json.loads((out / "prune.json").read_text())
    assert len(result["accuracy"]["finetuned"]["val_curve"]) == 2
    assert load_checkpoint(out / "finetune" / "last.pt")["epoch"] == 2
    assert not (out / "prune.partial.json").exists()
    chanloss.load_model(out / "pruned.pt")
    # another request into the unfinished directory is refused in one line
    CtrlCLoss.AT = [3]
    other = tmp_path / "q"
    assert main(["prune", str(run), "--out", str(other), "--finetune-epochs", "2", "-q"]) == 130
    capsys.readouterr()
    CtrlCLoss.AT = []
    line = one_error_line(capsys, ["prune", str(run), "--out", str(other), "--method", "l1"])
    assert "holds an unfinished prune of another request (" in line
    assert "method: 'cpli' there, 'l1' now" in line


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
    source = runs["mc"].read_bytes()
    out = tmp_path / "never"
    cases = [
        (["--speedup", "1"], "--speedup must be a number > 1"),
        (["--speedup", "0.5"], "--speedup must be a number > 1"),
        (["--speedup", "nan"], "--speedup must be a number > 1"),
        (["--speedup", "500"], "--speedup 500 is unreachable"),
        (["--method", "magic"], "unknown --method 'magic'; expected one of cpli, l1"),
        (["--set", "prune.colour=1"], "unknown pruning option"),
        (["--set", "prune.mix=2"], "prune.mix must be a number in [0, 1]"),
        (["--set", "prune.round_to=0"], "prune.round_to must be an integer >= 1"),
        (["--set", "prune.global=maybe"], "prune.global must be true or false"),
        (["--set", "prune.finetune_lr=-1"], "prune.finetune_lr must be a number > 0"),
        (["--set", "prune.round_to=32"], "unreachable: the narrowest allowed widths"),
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
    # a model whose only convolution is the feature layer: nothing to prune without it
    lone = _train(base, "lone", {"name": "test_prune_one_conv"}, [{"name": "ce"}])
    line = one_error_line(capsys, ["prune", str(lone), "--out", str(out)])
    assert "has no prunable group" in line and "--prune-features" in line
    # a pruned checkpoint is not pruned again
    assert main(["prune", good, "--out", str(tmp_path / "once"), "--method", "l1", "-q"]) == 0
    line = one_error_line(
        capsys, ["prune", str(tmp_path / "once" / "pruned.pt"), "--out", str(out)]
    )
    assert "already pruned" in line
    # a checkpoint pruned by a layout this version cannot replay: one line for every command
    state = load_checkpoint(tmp_path / "once" / "pruned.pt")
    save_checkpoint({**state, "pruning": {**state["pruning"], "version": 99}}, tmp_path / "old.pt")
    line = one_error_line(capsys, ["eval", str(tmp_path / "old.pt"), "--out", str(out)])
    assert "cannot re-apply its pruned structure (pruning record version 99" in line
    assert not out.exists()
    assert runs["mc"].read_bytes() == source  # the source run is untouched


def test_a_gated_cc_run_prunes_and_every_command_reads_it(tmp_path, capsys):
    """CC-Loss's default placement puts an SE gate between the feature map and the head: the
    inner groups prune, the gate is carried over, and eval, predict, export and a resumed
    fine-tune read the pruned checkpoint."""
    last = _train(tmp_path, "gated", MODEL, [{"name": "ce"}, {"name": "cc", "reduction": 4}])
    assert load_checkpoint(last)["model"]["gate.fc1.weight"].shape == (5, 20)
    out = tmp_path / "p"
    argv = ["prune", str(last), "--out", str(out), "--speedup", "2", "--finetune-epochs", "1"]
    assert main([*argv, "--set", "prune.round_to=1"]) == 0
    assert f"wrote {out / 'pruned.pt'}" in capsys.readouterr().out
    result = json.loads((out / "prune.json").read_text())
    assert result["macs"]["before"] / result["macs"]["after"] >= 2.0
    state = load_checkpoint(out / "pruned.pt")
    assert state["model"]["gate.fc1.weight"].shape == (5, 20)  # the feature map keeps its width
    model = chanloss.load_model(out / "pruned.pt")
    x = torch.rand(3, 1, 8, 8)
    assert model(x).shape == (3, 10)
    assert main(["eval", str(out / "pruned.pt"), "--out", str(tmp_path / "ev")]) == 0
    top1 = json.loads((tmp_path / "ev" / "test" / "eval.json").read_text())["top1"]
    assert top1 == pytest.approx(result["accuracy"]["kept"]["test"])
    image = tmp_path / "one.png"
    Image.fromarray((np.random.default_rng(1).random((8, 8)) * 255).astype(np.uint8)).save(image)
    assert main(["predict", str(out / "pruned.pt"), str(image)]) == 0
    assert main(["export", str(out / "pruned.pt"), "--out", str(tmp_path / "g.pt")]) == 0
    torch.testing.assert_close(torch.jit.load(str(tmp_path / "g.pt"))(x), model(x))
    tune = out / "finetune"
    assert main(["train", "--out", str(tune), "--resume", "--set", "epochs=2", "-q"]) == 0
    assert load_checkpoint(tune / "last.pt")["pruning"] == state["pruning"]
