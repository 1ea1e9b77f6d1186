"""Using a trained model: load_model, predict, export (TorchScript, ONNX) and their CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_config import TINY

import chanloss
from chanloss.cli import main
from chanloss.config import load_config
from chanloss.data import build_datasets, channel_stats, to_float_images
from chanloss.inference import (
    InferenceError,
    Preprocessing,
    TrainedModel,
    export_model,
    image_files,
    predict,
)
from chanloss.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from chanloss.run.session import train
from chanloss.run.trainer import Trainer

CLASSES = ("ant", "bee", "cat")
# shorter side to 10, centre 8x8 crop: stored 10x10 in memory, cropped on the device
DATA_OPTIONS = {"image_size": [8, 8], "resize": 10, "colour": "L", "num_workers": 0}


def make_folder(root: Path) -> Path:
    """Grey PNGs of 10x12 pixels (so that the centre crop to 8x8 matters), 3 classes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 3)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                base = rng.integers(0, 256, (10, 12))
                base[:, 4 * c : 4 * c + 4] = 255  # a class-dependent stripe
                Image.fromarray(base.astype(np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("inference")
    root = make_folder(base / "imgs")
    raw = {
        **TINY,
        "data": {"name": "image_folder", "root": str(root), "options": DATA_OPTIONS},
        "batch_size": 6,
    }
    train(load_config(raw=raw), base / "run", verbose=0)
    margin = {
        **TINY,
        "data": {"name": "digits", "augment": {"resize": 12}},
        "losses": [{"name": "arcface"}],
        "batch_size": 256,
    }
    train(load_config(raw=margin), base / "margin", verbose=0)
    return {"base": base, "root": root, "ckpt": base / "run" / "last.pt", "raw": raw}


def trainer_scores(ckpt: Path, images: torch.Tensor) -> torch.Tensor:
    """What the trainer scores in evaluation: its eval augmentation, model and logit head."""
    state = load_checkpoint(ckpt)
    trainer = Trainer(load_config(raw=state["config"]), ckpt.parent / "ref", verbose=0)
    trainer.model.load_state_dict(state["model"])
    for slot, sd in zip(trainer.slots, state["losses"], strict=True):
        slot.loss.load_state_dict(sd)
    trainer.model.eval()
    trainer.losses.eval()
    with torch.no_grad():
        return trainer.class_scores(trainer.model(trainer.eval_aug(images)))


def centre(images: torch.Tensor, size: int = 8) -> torch.Tensor:
    top, left = (images.shape[2] - size) // 2, (images.shape[3] - size) // 2
    return images[:, :, top : top + size, left : left + size]


def test_load_model_returns_the_network_with_its_preprocessing(run):
    model = chanloss.load_model(run["ckpt"])
    assert isinstance(model, TrainedModel) and not model.training
    pre = model.preprocessing
    data = build_datasets("image_folder", root=str(run["root"]), **DATA_OPTIONS)
    assert data.crop == (8, 8) and data.test.images.shape[2:] == (10, 10)
    mean, std = channel_stats(data.train.images)
    assert (pre.colour, pre.image_size, pre.resize_mode) == ("L", (8, 8), "crop")
    assert (pre.shorter_side, pre.batch_resize) == (10, None)
    assert pre.mean == pytest.approx(mean) and pre.std == pytest.approx(std)
    assert model.class_names == list(CLASSES)
    stored = to_float_images(data.test.images)
    with torch.no_grad():
        scores = model(centre(stored))
        assert torch.equal(model(centre(data.test.images)), scores)  # uint8 in: scaled by 1/255
    torch.testing.assert_close(scores, trainer_scores(run["ckpt"], stored))


def test_predict_reads_files_as_training_read_them(run, tmp_path):
    model = chanloss.load_model(run["ckpt"])
    files = image_files([run["root"] / "test"])
    assert [f.parent.name for f in files] == [c for c in CLASSES for _ in range(3)]
    predictions = model.predict([run["root"] / "test"], topk=3, batch_size=4)
    data = build_datasets("image_folder", root=str(run["root"]), **DATA_OPTIONS)
    probs = trainer_scores(run["ckpt"], to_float_images(data.test.images)).softmax(1)
    for p, row in zip(predictions, probs, strict=True):
        order = row.argsort(descending=True).tolist()
        assert list(p.indices) == order
        assert list(p.classes) == [CLASSES[i] for i in order]
        assert p.probabilities == pytest.approx(row[order].tolist(), abs=1e-6)
    one = predict(model, files[4], topk=1)
    assert one[0].path == str(files[4]) and one[0].indices == predictions[4].indices[:1]


def test_a_margin_head_scores_as_in_training(run):
    ckpt = run["base"] / "margin" / "last.pt"
    model = chanloss.load_model(ckpt)
    assert model.head is not None and model.preprocessing.batch_resize == (12, 12)
    x = build_datasets("digits").test.images[:16]
    with torch.no_grad():
        scores = model(x)
        assert not torch.allclose(scores, model.network(model.transform(x)).logits)
    torch.testing.assert_close(scores, trainer_scores(ckpt, x))
    assert model.class_names == [str(i) for i in range(10)]


def test_an_older_checkpoint_loads_with_a_warning(run, tmp_path):
    state = load_checkpoint(run["ckpt"])
    stored = state["meta"].pop("preprocessing")
    old = tmp_path / "old.pt"
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, old)
    with pytest.warns(UserWarning, match="before checkpoints stored their preprocessing"):
        model = chanloss.load_model(old)
    assert model.preprocessing == Preprocessing.from_dict(stored, "x")
    state["config"]["data"]["root"] = str(tmp_path / "moved")
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, old)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="could not be rebuilt"):
        chanloss.load_model(old)


def test_prediction_errors(run, tmp_path):
    model = chanloss.load_model(run["ckpt"])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InferenceError, match="notes.png is not an image Pillow can read"):
        model.predict([text])
    with pytest.raises(InferenceError, match="image not found"):
        model.predict([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InferenceError, match="no image files in"):
        model.predict([tmp_path / "empty"])
    for bad in (0, 4, 1.5, True):
        with pytest.raises(InferenceError, match=r"topk must be an integer in \[1, 3\]"):
            model.predict([run["root"] / "test"], topk=bad)
    with pytest.raises(InferenceError, match="unknown export format 'tflite'"):
        export_model(run["ckpt"], tmp_path / "m", format="tflite")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        chanloss.load_model(tmp_path / "none.pt")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_torchscript(run, tmp_path):
    path = export_model(run["ckpt"], tmp_path / "model.pt")
    extra = {"chanloss.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    info = json.loads(extra["chanloss.json"])
    model = chanloss.load_model(run["ckpt"])
    assert info == {"preprocessing": model.preprocessing.to_dict(), "class_names": list(CLASSES)}
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def test_export_onnx(run, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    path = export_model(run["ckpt"], format="onnx")
    assert path == run["ckpt"].with_suffix(".onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["chanloss"])["class_names"] == list(CLASSES)
    x = torch.rand(3, 1, 8, 8)
    (scores,) = ReferenceEvaluator(proto).run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = chanloss.load_model(run["ckpt"])(x).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    path.unlink()


def one_error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("chanloss: error: "), captured.err
    return lines[0]


def test_predict_and_export_commands(run, tmp_path, capsys):
    ckpt, test = str(run["ckpt"]), str(run["root"] / "test")
    assert main(["predict", ckpt, test, "--topk", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9
    expected = chanloss.load_model(ckpt).predict([test], topk=2)
    first = expected[0]
    assert lines[0].split() == [
        first.path,
        first.classes[0],
        f"{100 * first.probabilities[0]:.1f}%",
        first.classes[1],
        f"{100 * first.probabilities[1]:.1f}%",
    ]
    out = tmp_path / "p.csv"
    assert main(["predict", ckpt, test, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"9 predictions in {out}"
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [p.path for p in expected]
    assert [r["class_1"] for r in rows] == [p.classes[0] for p in expected]
    assert float(rows[0]["probability_1"]) == pytest.approx(first.probabilities[0], rel=1e-5)
    assert list(rows[0]) == ["path", "class_1", "probability_1"]

    target = tmp_path / "m.torchscript.pt"
    assert main(["export", ckpt, "--out", str(target)]) == 0
    assert target.is_file() and f"to {target}" in capsys.readouterr().out

    text = tmp_path / "a.png"
    text.write_text("hello")
    assert "a.png is not an image" in one_error_line(capsys, ["predict", ckpt, str(text)])
    assert "checkpoint not found" in one_error_line(
        capsys, ["predict", str(tmp_path / "no.pt"), test]
    )
    assert "argument --topk: must be an integer >= 1, got '0'" in one_error_line(
        capsys, ["predict", ckpt, test, "--topk", "0"]
    )
    assert "topk must be an integer in [1, 3]" in one_error_line(
        capsys, ["predict", ckpt, test, "--topk", "5"]
    )
    assert "invalid choice: 'keras'" in one_error_line(
        capsys, ["export", ckpt, "--format", "keras"]
    )
    assert "the directory does not exist" in one_error_line(
        capsys, ["predict", ckpt, test, "--out", str(tmp_path / "nowhere" / "p.csv")]
    )
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_takes_its_format_from_the_suffix_of_out(run, tmp_path, capsys):
    import onnx

    ckpt = str(run["ckpt"])
    target = tmp_path / "model.onnx"  # no --format: .onnx means ONNX (was TorchScript)
    assert main(["export", ckpt, "--out", str(target)]) == 0
    assert f"(onnx) to {target}" in capsys.readouterr().out
    proto = onnx.load(str(target))
    assert {p.key for p in proto.metadata_props} == {"chanloss"}
    scripted = tmp_path / "model.pt"  # any other suffix: TorchScript, the default
    assert main(["export", ckpt, "--out", str(scripted)]) == 0
    assert "(torchscript)" in capsys.readouterr().out
    torch.jit.load(str(scripted))
    # a --format that contradicts the suffix: one line, nothing written
    line = one_error_line(capsys, ["export", ckpt, "--out", str(tmp_path / "m.onnx"),
                                   "--format", "torchscript"])  # fmt: skip
    assert "m.onnx: a .onnx file is ONNX, but --format torchscript was asked for" in line
    assert "name the file m.torchscript.pt, or leave --format out" in line
    line = one_error_line(capsys, ["export", ckpt, "--out", str(tmp_path / "m.pt"),
                                   "--format", "onnx"])  # fmt: skip
    assert "a .pt file is TorchScript, but --format onnx was asked for" in line
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.pt").exists()
