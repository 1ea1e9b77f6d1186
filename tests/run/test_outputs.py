"""What runs leave and print: complete config.yaml files, compare's table and progress lines."""

from __future__ import annotations

import copy
import csv
import io
import json

import pytest
from tiny_config import TINY

from chanloss.config import ConfigError, dump_config, load_config
from chanloss.experiments.comparison import (
    compare,
    differing_settings,
    results_table,
    settings_text,
)
from chanloss.run.session import train


def tiny(**changes: object):
    raw = copy.deepcopy(TINY)
    raw.update(copy.deepcopy(changes))
    return load_config(raw=raw)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_config_yaml_names_every_parameter_and_reproduces_the_run(tmp_path):
    config = tiny(losses=[{"name": "ce"}, {"name": "mc", "beta": 5.0}, {"name": "cc"}], epochs=1)
    train(config, tmp_path / "a", verbose=0)
    text = (tmp_path / "a" / "config.yaml").read_text()
    stored = load_config(tmp_path / "a" / "config.yaml")
    mc, cc = stored.losses[1].params(), stored.losses[2].params()
    assert mc == {
        "beta": 5.0,
        "alpha": 1.5,
        "keep_ratio": pytest.approx(2 / 3),
        "drop": None,
        "pool": "max",
        "per_sample_mask": False,
        "group_average": "pooled",
        "check_finite": False,
    }
    assert {"reduction": 16, "pair_reduction": "mean", "eps": 1e-6, "gather": True}.items() <= (
        cc.items()
    )
    assert "num_classes" not in text and "num_channels" not in text  # taken from data/model
    assert stored.model.options() == {"width": 4, "feature_channels": 20, "pools": 1}
    assert dump_config(stored) == text  # a fixed point: nothing is added a second time
    train(stored, tmp_path / "b", verbose=0)
    keep = ("epoch_time", "samples_per_s")
    strip = [
        {k: v for k, v in r.items() if k not in keep} for r in _rows(tmp_path / "a" / "metrics.csv")
    ]
    again = [
        {k: v for k, v in r.items() if k not in keep} for r in _rows(tmp_path / "b" / "metrics.csv")
    ]
    assert strip == again


def test_mc_drop_gets_no_keep_ratio_default_and_still_builds():
    config = tiny(losses=[{"name": "ce"}, {"name": "mc", "drop": 1}])
    assert "keep_ratio" not in config.losses[1].params()
    again = load_config(raw=json.loads(json.dumps(config.model_dump(mode="json"))))
    assert again == config
    focal = tiny(losses=[{"name": "focal"}]).losses[0].params()
    assert focal == {"gamma": 2.0, "check_finite": False}  # num_classes comes from the data


def test_compare_labels_runs_by_the_settings_that_differ():
    a = tiny(losses=[{"name": "ce"}, {"name": "mc", "beta": 20.0}])
    b = tiny(losses=[{"name": "ce"}, {"name": "mc", "beta": 5.0}], optim={"lr": 0.1})
    c = tiny(losses=[{"name": "ce"}])
    settings = differing_settings([a, b, c])
    assert settings[0] == {"losses": "ce + mc", "mc.beta": 20.0, "optim.lr": 0.05}
    assert settings[1] == {"losses": "ce + mc", "mc.beta": 5.0, "optim.lr": 0.1}
    # no mc: its parameters are not its settings, its loss list is
    assert settings[2] == {"losses": "ce", "optim.lr": 0.05}
    assert settings_text(settings[1]) == "losses=ce + mc, mc.beta=5, optim.lr=0.1"
    assert differing_settings([a, b]) == [
        {"mc.beta": 20.0, "optim.lr": 0.05},
        {"mc.beta": 5.0, "optim.lr": 0.1},
    ]  # the same losses: not a setting that differs
    assert differing_settings([c, tiny(losses=[{"name": "ce"}, {"name": "mc"}])]) == [
        {"losses": "ce"},
        {"losses": "ce + mc"},
    ]  # CE vs CE + MC-Loss: told apart by their losses (was "—")
    assert settings_text({}) == "—"
    assert differing_settings([a, a.model_copy(update={"seed": 3})]) == [{}, {}]


def test_compare_shows_val_beside_test_and_a_line_per_epoch(tmp_path):
    configs = [
        ("low", tiny(epochs=2, data={"name": "digits", "val_fraction": 0.2})),
        ("high", tiny(epochs=2, data={"name": "digits", "val_fraction": 0.2}, optim={"lr": 0.1})),
    ]
    stream = io.StringIO()
    results = compare(configs, seeds=1, out_dir=tmp_path, stream=stream)
    printed = stream.getvalue()
    for r, (label, _) in zip(results, configs, strict=True):
        summary = json.loads((tmp_path / label / "seed0" / "summary.json").read_text())
        last = _rows(tmp_path / label / "seed0" / "metrics.csv")[-1]
        assert r.test_acc == [summary["final_test_acc"]]
        assert r.val_acc == [pytest.approx(float(last["val_acc"]), rel=1e-5)]
        assert f"{label} seed 0 epoch 2/2" in printed
    assert printed.count("all runs: ") == 4 and "all runs: 4/4 epochs (100%)" in printed
    assert "[2/2]" in printed and "val " in printed
    table = results_table(results)
    assert "| val acc (%) | test acc (%) |" in table
    assert "| low | convnet_small | ce | optim.lr=0.05 | " in table
    assert f"{100 * results[1].val_mean:.2f} ± 0.00 | {100 * results[1].mean:.2f} ± 0.00" in table
    row = _rows(tmp_path / "results.csv")[1]
    assert row["settings"] == "optim.lr=0.1" and float(row["val_acc_mean"]) == pytest.approx(
        results[1].val_mean, abs=1e-6
    )
    with pytest.raises(ConfigError, match="--jobs must be at least 1, got 0"):
        compare(configs, seeds=1, out_dir=tmp_path, jobs=0)


def test_epoch_lines_show_val_test_comes_once_and_metrics_are_rounded(tmp_path, capsys):
    run = tmp_path / "run"
    raw = {"epochs": 2, "data": {"name": "digits", "val_fraction": 0.2}}
    summary = train(tiny(**raw), run, verbose=2)
    out = capsys.readouterr().out
    assert out.startswith("loading data: digits ...\nloaded 1149 train / 288 val / 360 test images")
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and all(" val " in line and " test " not in line for line in lines)
    assert f"test accuracy after epoch 2: {100 * summary['final_test_acc']:.2f}%" in out
    rows = _rows(run / "metrics.csv")
    assert rows[0]["test_acc"] == "" and rows[1]["test_acc"] != ""  # test only at the end
    assert summary["final_val_acc"] == pytest.approx(float(rows[1]["val_acc"]), rel=1e-5)
    for row in rows:
        for key in ("ce", "train_loss", "train_acc", "val_acc", "lr", "epoch_time"):
            assert len(row[key].replace("-", "").replace(".", "").lstrip("0")) <= 6, row[key]
    every = train(tiny(test_every_epoch=True, **raw), tmp_path / "every", verbose=0)
    assert all(r["test_acc"] for r in _rows(tmp_path / "every" / "metrics.csv"))
    assert every["final_test_acc"] == summary["final_test_acc"]  # it changes nothing else


def test_tensorboard_gets_per_step_scalars_under_grouped_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny(
        epochs=2,
        tensorboard=True,
        data={"name": "digits", "val_fraction": 0.2},
        losses=[{"name": "ce"}, {"name": "center"}],
    )
    train(config, tmp_path, verbose=0)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/ce", "loss/center", "loss/total", "train/lr"} <= tags
    assert {"train/accuracy", "train/epoch_loss", "val/accuracy", "test/accuracy"} <= tags
    assert not [t for t in tags if "/" not in t]  # every tag in a group
    # 1149 training images in full batches of 128: 8 steps an epoch, logged every 10th and last
    assert [e.step for e in events.Scalars("loss/total")] == [8, 16]
    assert [e.step for e in events.Scalars("val/accuracy")] == [8, 16]
    assert [e.step for e in events.Scalars("test/accuracy")] == [16]


def test_resuming_says_from_which_epoch_and_step(tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(epochs=2), run, stop_after=1, verbose=0)
    train(tiny(epochs=2), run, resume=True, verbose=2)
    out = capsys.readouterr().out  # 1437 images in full batches of 128: 11 steps an epoch
    assert f"resuming {run} after epoch 1 of 2: epoch 2 starts at global step 12" in out


def test_image_folder_size_and_colour_default_to_auto_and_say_so(tmp_path, capsys):
    from PIL import Image

    from chanloss.data import build_datasets

    for split, n in (("train", 3), ("test", 1)):
        for c in ("a", "b"):
            folder = tmp_path / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                size = (10, 12) if (split, c, i) != ("train", "b", 2) else (20, 20)  # (w, h)
                Image.new("L", size, color=40 * i).save(folder / f"{i}.png")
    bundle = build_datasets("image_folder", root=str(tmp_path))
    # mixed sizes: the median height and width (12x10), each rounded to a multiple of 8
    assert bundle.train.images.shape == (6, 1, 16, 8) and bundle.in_channels == 1
    out = capsys.readouterr().out
    assert "image_size auto -> 16x8 (the median of 6 sampled training images, 12x10," in out
    assert "colour auto -> L (every sampled image is grey)" in out
    Image.new("RGB", (10, 12)).save(tmp_path / "train" / "a" / "rgb.png")
    bundle = build_datasets("image_folder", root=str(tmp_path), image_size=8)
    assert bundle.train.images.shape[1:] == (3, 8, 8)
    assert "colour auto -> RGB (colour images among them)" in capsys.readouterr().out
    explicit = build_datasets("image_folder", root=str(tmp_path), image_size=8, colour="L")
    assert explicit.train.images.shape[1:] == (1, 8, 8) and capsys.readouterr().out == ""
