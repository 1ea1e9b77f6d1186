"""The accuracy study (benchmarks/study/): its settings file gives the protocol it always had
(sweeps on validation, the chosen values in the study parts, the ResNet-20 and current-defaults
parts), and its loop over the package's compare writes the results files, a diverged run
recorded and left out of the mean."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def study() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(
        "chanloss_study_run", BENCH / "study" / "run_study.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chanloss_study_run"] = module
    spec.loader.exec_module(module)
    return module


def test_study_configs_are_valid_and_sweeps_use_validation(study: ModuleType):
    from chanloss.config import load_config

    for part in study.PARTS.values():
        if part.kind != "sweep":
            continue
        items = study.sweep_configs(part)
        assert len(items) == sum(len(study.grid(g)) for g in part.grids.values())
        for item in items:
            config = load_config(raw=item["raw"])
            assert config.data.val_fraction == study.VAL_FRACTION > 0
            assert [e.name for e in config.losses] == ["ce", item["loss"]]
    chosen = {"cc": {"weight": 0.1, "reduction": 16}, "mc": {"beta": 5.0}}
    items = study.study_configs(study.PARTS["digits"], chosen)
    by_label = {i["label"]: load_config(raw=i["raw"]) for i in items}
    assert set(by_label) == set(study.SETTINGS["losses"])
    assert all(c.data.val_fraction == 0.0 for c in by_label.values())
    cc = by_label["cc"].losses[1]
    # a validated config names every parameter (the defaults too): check what the study set
    assert (cc.name, cc.weight) == ("cc", 0.1)
    assert {"form": "ratio", "reduction": 16}.items() <= cc.params().items()
    assert by_label["center"].losses[1].params()["center_update"] == "sgd"  # as recorded
    assert by_label["mc"].losses[1].params()["beta"] == 5.0
    with pytest.raises(ValueError, match=r"missing for \['mc'\]"):
        study.study_configs(study.PARTS["digits"], {"cc": {}})


def test_choose_picks_best_validation_mean_then_lower_std(study: ModuleType):
    rows = [
        {"loss": "cc", "params": {"w": 1}, "val_acc_mean": 0.90, "val_acc_std": 0.01},
        {"loss": "cc", "params": {"w": 2}, "val_acc_mean": 0.95, "val_acc_std": 0.03},
        {"loss": "cc", "params": {"w": 3}, "val_acc_mean": 0.95, "val_acc_std": 0.02},
        {"loss": "mc", "params": {"b": 1}, "val_acc_mean": math.nan, "val_acc_std": math.nan},
        {"loss": "mc", "params": {"b": 2}, "val_acc_mean": 0.5, "val_acc_std": 0.0},
    ]
    assert study.choose(rows) == {"cc": {"w": 3}, "mc": {"b": 2}}
    with pytest.raises(ValueError, match="must not carry test accuracy"):
        study.choose([{**rows[0], "test_acc_mean": 0.9}])


def test_sweep_outputs_carry_no_test_accuracy(study: ModuleType):
    assert not [c for c in study.SWEEP_COLUMNS if "test" in c]
    assert "val_acc_mean" in study.SWEEP_COLUMNS
    assert "test_acc_mean" in study.STUDY_COLUMNS


def test_resnet20_parts_swap_the_backbone_and_train_the_named_losses(study: ModuleType):
    from chanloss.config import load_config

    chosen = {"cc": {"weight": 0.1}, "mc": {"beta": 5.0}}
    for name in ("digits-resnet20", "mnist5k-resnet20", "finegrained-resnet20"):
        part = study.PARTS[name]
        convnet = study.PARTS[part.dataset]
        assert part.sweep_part == convnet.sweep_part  # CC/MC values come from the ConvNet sweep
        assert part.column == f"{part.dataset}, resnet20" and convnet.column == part.dataset
        items = study.study_configs(part, chosen)
        assert [i["label"] for i in items] == study.SETTINGS["core_losses"]
        for item in items:
            config = load_config(raw=item["raw"])
            assert config.model.name == "resnet20" and config.data.name == part.dataset
            assert item["raw"]["model"] == {"name": "resnet20"} and config.data.val_fraction == 0.0
        mc = next(i for i in items if i["label"] == "mc")
        assert mc["raw"]["losses"][1] == {"name": "mc", "beta": 5.0}
        # the recipe apart from the model is the data set's
        expected = {
            k: v for k, v in study.SETTINGS["recipes"][part.dataset].items() if k != "model"
        }
        assert {k: v for k, v in study.recipe(part).items() if k != "model"} == expected
        # --only narrows within the part's losses; a loss outside them is not trained
        only = study.study_configs(part, chosen, ["ce", "sphereface"])
        assert [i["label"] for i in only] == ["ce"]
    assert study.recipe(study.PARTS["digits"]) == study.SETTINGS["recipes"]["digits"]


def test_defaults_parts_train_the_changed_losses_at_their_current_defaults(study: ModuleType):
    from chanloss.config import load_config
    from chanloss.losses import CCLoss, CenterLoss

    names = ("defaults-digits", "defaults-mnist5k", "defaults-finegrained")
    for name in (*names, "defaults-digits-resnet20"):
        part = study.PARTS[name]
        if name in names:
            assert part.column == f"{part.dataset}, current defaults"
            assert study.recipe(part) == study.SETTINGS["recipes"][part.dataset]
        else:
            assert part.column == f"{part.dataset}, resnet20, current defaults"
            assert study.recipe(part)["model"] == {"name": "resnet20"}
        items = study.study_configs(part, {})  # no sweep values needed: nothing here is tuned
        assert [i["label"] for i in items] == ["ce", "cc_default", "center_default"]
        by_label = {i["label"]: load_config(raw=i["raw"]) for i in items}
        cc = by_label["cc_default"].losses[1].params()
        center = by_label["center_default"].losses[1].params()
        # CC-Loss is pinned to the side-branch margin defaults these parts were recorded with
        # (the defaults before the gate reading); the centre loss carries its own defaults
        assert (cc["form"], cc["placement"]) == ("margin", "branch")
        assert CCLoss.__init__.__kwdefaults__["form"] == "ratio"
        assert center["center_update"] == CenterLoss.__init__.__kwdefaults__["center_update"]
        assert center["center_update"] == "paper"
    # the recorded parts keep the pinned forms they were trained with, and no defaults rows
    labels = [i["label"] for i in study.study_configs(study.PARTS["digits"], {"cc": {}, "mc": {}})]
    assert "cc_default" not in labels and "center_default" not in labels
    with pytest.raises(ValueError, match="chosen values are missing"):
        study.study_configs(study.PARTS["digits"], {})


def test_the_loop_writes_the_results_files_and_records_a_diverged_run(
    tmp_path: Path, study: ModuleType, monkeypatch: pytest.MonkeyPatch
):
    runs, results = tmp_path / "runs", tmp_path / "results"
    args = ["--epochs", "1", "--seeds", "2", "--runs", str(runs), "--results", str(results)]
    label = "cc_weight-1_reduction-4_pair_reduction-mean"
    assert study.main(["--part", "sweep-digits", "--only", label, *args]) == 0
    with open(results / "study_sweep-digits.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert row["label"] == label and row["seeds"] == "2" and row["finished_seeds"] == "2"
    assert "test_acc_mean" not in row and 0 <= float(row["val_acc_mean"]) <= 1
    assert row["chosen"] == "True"
    meta = json.loads((results / "study_sweep-digits.json").read_text())
    assert meta["chosen"] == {"cc": {"weight": 1.0, "reduction": 4, "pair_reduction": "mean"}}
    assert meta["complete"] is False  # --only: a part of the sweep
    assert (results / "study_sweep-digits_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (runs / "sweep-digits" / label / "seed1" / "summary.json").is_file()

    diverging = json.loads(json.dumps(study.SETTINGS["recipes"]["digits"]))
    diverging["optim"] = {"name": "sgd", "lr": 1e30, "momentum": 0.0}
    monkeypatch.setitem(study.SETTINGS["recipes"], "digits", diverging)
    assert study.main(["--part", "defaults-digits", "--only", "ce", *args]) == 0
    with open(results / "study_defaults-digits.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert (row["seeds"], row["finished_seeds"], row["diverged_seeds"]) == ("2", "0", "2")
    assert row["test_acc_mean"] == "" and row["test_accs"] == ""
    assert (runs / "defaults-digits" / "ce" / "seed0" / "diverged.json").is_file()
    meta = json.loads((results / "study_defaults-digits.json").read_text())
    assert meta["complete"] is False and meta["run_wall_time_sum_s"] > 0
    with pytest.raises(SystemExit, match="uses the values chosen by the complete sweep"):
        study.main(["--part", "digits", *args])
    assert math.isfinite(meta["wall_time_s"])
