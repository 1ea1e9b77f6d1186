"""Image folders without test/ (a fixed stratified test split is carved from train/) and with
val/ (the validation split), in memory and stream mode, and what a run stores about them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from chanloss.cli import main
from chanloss.data import DatasetError, build_datasets, has_own_val

COUNTS = {"a": 10, "b": 5, "c": 15}  # images per class in train/


def make_folder(root: Path, splits: dict[str, dict[str, int]]) -> Path:
    """Grey 6x6 PNGs; pixel value = a running number, so every image is told apart."""
    number = 0
    for split, counts in splits.items():
        for name, count in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                number += 1
                Image.new("L", (6, 6), color=number).save(folder / f"{i}.png")
    return root


def pixel_ids(dataset) -> list[int]:
    """The number each image was drawn with (stream mode yields uint8, memory mode floats)."""
    firsts = [dataset[i][0].flatten()[0] for i in range(len(dataset))]
    return [int(v) if v.dtype == torch.uint8 else int(v * 255 + 0.5) for v in firsts]


def test_a_folder_without_test_gets_a_fixed_stratified_test_split(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", {"train": COUNTS})
    bundle = build_datasets("image_folder", root=str(root), seed=0)
    out = capsys.readouterr().out
    assert "has no test/ folder; the test split is 6 of the 30 train/ images (20%" in out
    assert "data.options.test_fraction" in out
    # stratified: 20% of each class, the rest trains; together every image exactly once
    test_counts = Counter(bundle.test.labels.tolist())
    assert test_counts == {0: 2, 1: 1, 2: 3}
    train_ids, test_ids = pixel_ids(bundle.train), pixel_ids(bundle.test)
    assert sorted(train_ids + test_ids) == list(range(1, 31)) and not set(train_ids) & set(test_ids)
    assert bundle.splits["test"]["from"].startswith("6 of the 30 train/ images")
    # fixed: another run seed (and a validation split drawn from the rest) keeps the test split
    other = build_datasets("image_folder", root=str(root), seed=5, val_fraction=0.25)
    assert pixel_ids(other.test) == test_ids
    assert len(other.val) == 6 and not set(pixel_ids(other.val)) & set(test_ids)
    # the fraction is an option; a bigger one holds out more
    half = build_datasets("image_folder", root=str(root), test_fraction=0.5)
    half_counts = Counter(half.test.labels.tolist())
    assert len(half.test) == 15
    assert all(abs(half_counts[i] - n / 2) <= 1 for i, n in enumerate(COUNTS.values()))


def test_the_test_fraction_is_checked_and_a_class_too_small_to_split_is_named(tmp_path):
    root = make_folder(tmp_path / "imgs", {"train": {"a": 4, "b": 1}})
    with pytest.raises(
        ValueError, match=r"test_fraction must be a finite number in \(0, 0.9\], got 1.5"
    ):
        build_datasets("image_folder", root=str(root), test_fraction=1.5)
    with pytest.raises(DatasetError, match="class 'b' has 1 image there; expected at least 2"):
        build_datasets("image_folder", root=str(root))
    # enough images per class, but fewer test images than classes: sklearn's reason, our hint
    few = make_folder(tmp_path / "few", {"train": {"a": 2, "b": 2, "c": 2}})
    with pytest.raises(DatasetError, match="has no test/ folder, so data.options.test_fraction"):
        build_datasets("image_folder", root=str(few), test_fraction=0.2)


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_a_val_folder_is_the_validation_split(tmp_path, mode):
    root = make_folder(
        tmp_path / "imgs",
        {"train": COUNTS, "val": {"a": 2, "b": 1, "c": 3}, "test": {"a": 1, "c": 1}},
    )
    assert has_own_val("image_folder", str(root)) and not has_own_val("digits", str(root))
    bundle = build_datasets("image_folder", root=str(root), mode=mode)
    assert len(bundle.train) == 30 and len(bundle.test) == 2 and len(bundle.val) == 6
    assert sorted(bundle.val.labels.tolist()) == [0, 0, 1, 2, 2, 2]
    assert pixel_ids(bundle.val) == list(range(31, 37))  # the val/ files, in class order
    assert bundle.splits["val"]["from"] == "val/"
    with pytest.raises(ValueError, match=r"its own validation split \(val/, 6 images\).*"):
        build_datasets("image_folder", root=str(root), mode=mode, val_fraction=0.1)


def test_a_val_class_missing_from_train_is_named(tmp_path):
    root = make_folder(tmp_path / "imgs", {"train": {"a": 3, "b": 3}, "val": {"z": 1}})
    with pytest.raises(DatasetError, match=r"val/z: class 'z' is not among the train classes"):
        build_datasets("image_folder", root=str(root))


def test_train_on_a_folder_of_train_only_stores_how_the_test_split_was_made(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", {"train": COUNTS})
    config = {
        "model": {"name": "convnet_small", "width": 4, "feature_channels": 6},
        "data": {"name": "image_folder", "root": str(root), "options": {"test_fraction": 0.4}},
        "losses": [{"name": "ce"}],
        "epochs": 1,
        "batch_size": 8,
        "device": "cpu",
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "-c", str(path), "--out", str(tmp_path / "run")]) == 0
    assert "the test split is 12 of the 30 train/ images (40%" in capsys.readouterr().out
    splits = json.loads((tmp_path / "run" / "summary.json").read_text())["splits"]
    assert splits["train"] == {"images": 18, "from": "the data set's own"}
    assert splits["test"]["images"] == 12 and "40%" in splits["test"]["from"]


def test_tune_scores_trials_on_a_val_folder_without_a_val_fraction(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", {"train": COUNTS, "val": {"a": 2, "b": 2, "c": 2}})
    config = {
        "model": {"name": "convnet_small", "width": 4, "feature_channels": 6},
        "data": {"name": "image_folder", "root": str(root)},
        "losses": [{"name": "ce"}, {"name": "mc"}],
        "epochs": 1,
        "batch_size": 8,
        "device": "cpu",
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["tune", "-c", str(path), "--out", str(tmp_path / "t"), "--trials", "1"]
    assert main([*argv, "--confirm-seeds", "0"]) == 0, capsys.readouterr().err
    rows = (tmp_path / "t" / "trials.csv").read_text().splitlines()
    header, first = (
        rows[0].split(","),
        dict(zip(rows[0].split(","), rows[1].split(","), strict=True)),
    )
    assert "val_acc" in header and first["state"] == "complete"
    assert 0.0 <= float(first["val_acc"]) <= 1.0  # scored on the 6 images of val/


def test_a_bad_dataset_option_is_named_by_its_place_in_the_config(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", {"train": COUNTS})
    raw = {
        "model": {"name": "convnet_small", "width": 4, "feature_channels": 8},
        "data": {"name": "image_folder", "root": str(root), "options": {"test_fraction": 1.5}},
        "losses": [{"name": "ce"}],
        "epochs": 1,
        "device": "cpu",
    }
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["train", "-c", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "data.options.test_fraction must be a finite number in (0, 0.9], got 1.5" in err
