"""The one checkpoint loader: a run directory stands for its best.pt (or last.pt, saying
which) in eval, predict, export, analyze and load_model; a file that is no checkpoint is named
for what it is, with what was expected."""

from __future__ import annotations

import copy
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_config import TINY

from chanloss.cli import main
from chanloss.config import load_config
from chanloss.core.errors import CheckpointError
from chanloss.inference import load_model
from chanloss.run.builders import model_from_checkpoint
from chanloss.run.checkpoint import file_kind, load_checkpoint
from chanloss.run.loader import load_run, resolve_checkpoint
from chanloss.run.session import train

EXPECTED = "expected a run's last.pt or best.pt"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("loader") / "run"
    train(load_config(raw=copy.deepcopy(TINY)), run, verbose=0)
    return run


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    copied = tmp_path / "run"
    shutil.copytree(finished, copied)
    return copied


def test_a_run_directory_resolves_to_best_then_last(run, capsys):
    assert resolve_checkpoint(run) == run / "best.pt"
    assert "using its best.pt" in capsys.readouterr().err
    (run / "best.pt").unlink()
    assert resolve_checkpoint(run) == run / "last.pt"
    assert f"{run} is a run directory: using its last.pt (it has no best.pt)" in (
        capsys.readouterr().err
    )
    (run / "last.pt").unlink()
    with pytest.raises(
        CheckpointError, match=f"directory with neither best.pt nor last.pt; {EXPECTED}"
    ):
        resolve_checkpoint(run)


def test_load_model_of_a_run_directory_is_its_best_checkpoint(run, capsys):
    x = torch.rand(2, 1, 8, 8)
    from_dir = load_model(run)
    assert "using its best.pt" in capsys.readouterr().err
    from_file = load_model(run / "best.pt")
    assert torch.equal(from_dir(x), from_file(x))


def test_eval_predict_export_analyze_take_a_run_directory(run, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(images / "a.png")
    (run / "best.pt").unlink()  # also: the fallback is said
    assert main(["eval", str(run)]) == 0
    assert (run / "eval-last" / "test" / "eval.json").is_file()
    assert main(["predict", str(run), str(images)]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "m.torchscript.pt")]) == 0
    assert (tmp_path / "m.torchscript.pt").is_file()
    out = tmp_path / "analysis"
    assert main(["analyze", str(run), "--out", str(out), "--max-samples", "20"]) == 0
    assert (out / "metrics.csv").is_file()
    err = capsys.readouterr().err
    assert err.count("using its last.pt (it has no best.pt)") == 4


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("config.yaml", b"model:\n  name: resnet20\n", "a text file (YAML or CSV?)"),
        ("data.pkl", pickle.dumps({"a": [1, 2]}, protocol=5), "a Python pickle"),
        ("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
        ("array.npy", None, "a numpy .npy array"),
    ],
)
def test_a_file_that_is_no_checkpoint_is_named_with_what_was_expected(
    tmp_path, capsys, name, content, kind
):
    path = tmp_path / name
    if content is None:
        np.save(path, np.zeros(3))
    else:
        path.write_bytes(content)
    assert file_kind(path) == kind
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert f"it is {kind}" in text and EXPECTED in text
    assert "Unsupported operand" not in text and "WeightsUnpickler" not in text
    assert main(["predict", str(path), str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("chanloss: error: ") and EXPECTED in err[0]


def test_a_torch_file_of_other_contents_says_what_it_holds(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2)}, path)
    with pytest.raises(
        CheckpointError, match=r"a dict with the keys 'conv.weight'; expected a run"
    ):
        load_checkpoint(path)


def spy_on_rebuilds(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The shapes every model rebuilt from a checkpoint is built with, from now on."""
    calls: list[dict] = []

    def spy(config, state, **shape):
        calls.append(shape)
        return model_from_checkpoint(config, state, **shape)

    monkeypatch.setattr("chanloss.run.loader.model_from_checkpoint", spy)
    monkeypatch.setattr("chanloss.run.build.model_from_checkpoint", spy)
    return calls


def test_load_run_rebuilds_through_model_from_checkpoint(run, monkeypatch):
    calls = spy_on_rebuilds(monkeypatch)
    loaded = load_run(run / "last.pt", device="cpu", quiet=True)
    state = torch.load(run / "last.pt", weights_only=True)
    assert all(torch.equal(v, state["model"][k]) for k, v in loaded.model.state_dict().items())
    with_data = load_run(run, device="cpu", with_data=True, quiet=True)
    assert with_data.trainer is not None and with_data.path == run / "best.pt"
    assert calls == [{"num_classes": 10, "in_channels": 1}] * 2


def plain_accuracy(model: torch.nn.Module, evaluator, split: str) -> float:
    """Top-1 of the model's own classifier on a split's images, in one batch."""
    from chanloss.data import to_float_images

    data = getattr(evaluator.data, split)
    with torch.no_grad():
        logits = model(evaluator.eval_aug(to_float_images(data.images))).logits
    return float((logits.argmax(1) == data.labels).double().mean())


def test_load_for_eval_builds_no_optimiser_and_scores_like_the_trainer(run, monkeypatch):
    from chanloss.run.evaluator import Evaluator
    from chanloss.run.loader import load_for_eval
    from chanloss.run.trainer import Trainer

    calls = spy_on_rebuilds(monkeypatch)
    loaded = load_for_eval(run / "last.pt", device="cpu", quiet=True)
    evaluator = loaded.evaluator
    assert isinstance(evaluator, Evaluator) and not isinstance(evaluator, Trainer)
    assert loaded.trainer is None and calls == [{"num_classes": 10, "in_channels": 1}]
    for missing in ("optimizer", "scheduler", "train_batches", "step_module"):
        assert not hasattr(evaluator, missing)
    assert loaded.model is evaluator.model and not loaded.model.training
    state = torch.load(run / "last.pt", weights_only=True)
    assert all(torch.equal(v, state["model"][k]) for k, v in loaded.model.state_dict().items())
    trainer = load_run(run / "last.pt", device="cpu", with_data=True, quiet=True)
    assert trainer.evaluator is trainer.trainer
    accuracy = evaluator.accuracy("test")
    assert accuracy == trainer.trainer.accuracy("test")
    assert accuracy == pytest.approx(state["history"][-1]["test_acc"], abs=1e-12)
    assert accuracy == pytest.approx(plain_accuracy(loaded.model, evaluator, "test"), abs=1e-6)
    without_test = load_for_eval(run, device="cpu", evaluate_test=False, quiet=True).evaluator
    assert without_test is not None and "test" not in without_test.eval_batches
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_for_eval(run / "nope.pt", quiet=True)
