"""The trainer on tiny digits runs, what it writes: the run files, best chosen on validation
and the last epoch's test accuracy reported, eval's per-class accuracy and confusion, compare's
table over seeds (finished runs skipped, old runs still resumed)."""

from __future__ import annotations

import csv
import filecmp
import json
import statistics

import pytest
import torch
from training_helpers import manual_test_accuracy, read_metrics, tiny

from chanloss.analysis.evaluate import evaluate_checkpoint
from chanloss.config import ConfigError, load_config
from chanloss.data import build_datasets
from chanloss.experiments.comparison import compare
from chanloss.models import create_model
from chanloss.run.checkpoint import (
    load_checkpoint,
    save_checkpoint,
)
from chanloss.run.session import train


# -- run files ---------------------------------------------------------------------------------
def test_one_epoch_writes_the_run_files(tmp_path):
    run = tmp_path / "run"
    config = tiny()
    summary = train(config, run, verbose=0)
    for name in ("config.yaml", "metrics.csv", "summary.json", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert load_config(run / "config.yaml") == config

    rows = read_metrics(run)
    assert list(rows[0]) == [
        "epoch",
        "ce",
        "train_loss",
        "train_acc",
        "val_acc",
        "test_acc",
        "lr",
        "epoch_time",
        "samples_per_s",
    ]
    assert len(rows) == 1 and rows[0]["epoch"] == "1" and rows[0]["val_acc"] == ""
    assert float(rows[0]["ce"]) == pytest.approx(float(rows[0]["train_loss"]))
    assert float(rows[0]["lr"]) == 0.05

    assert json.loads((run / "summary.json").read_text()) == summary
    assert summary["finished"] and summary["epochs"] == 1 and summary["best_epoch"] == 1
    assert summary["best_val_acc"] is None
    assert summary["final_test_acc"] == pytest.approx(float(rows[0]["test_acc"]), rel=1e-5)
    assert summary["final_test_acc"] == pytest.approx(manual_test_accuracy(run), abs=1e-6)
    model = create_model(
        "convnet_small", num_classes=10, in_channels=1, width=4, feature_channels=20
    )
    assert summary["params"] == sum(p.numel() for p in model.parameters())

    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["global_step"] == 1437 // 128
    assert filecmp.cmp(run / "last.pt", run / "best.pt", shallow=False)  # no val split


def test_best_is_chosen_on_val_and_the_reported_accuracy_is_the_last_epochs(tmp_path):
    run = tmp_path / "run"
    summary = train(tiny("epochs=3", "data.val_fraction=0.3", "eval_every=2"), run, verbose=0)
    rows = read_metrics(run)
    assert [r["val_acc"] != "" for r in rows] == [False, True, True]
    assert [r["test_acc"] != "" for r in rows] == [False, False, True]  # test: at the end
    vals = {int(r["epoch"]): float(r["val_acc"]) for r in rows if r["val_acc"]}
    best_epoch = max(vals, key=lambda e: (vals[e], -e))
    assert summary["best_epoch"] == best_epoch
    assert summary["best_val_acc"] == pytest.approx(vals[best_epoch], rel=1e-5)  # csv: 6 digits
    assert summary["final_test_acc"] == pytest.approx(float(rows[-1]["test_acc"]), rel=1e-5)
    assert load_checkpoint(run / "best.pt")["epoch"] == best_epoch
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
    assert summary["final_test_acc"] == pytest.approx(manual_test_accuracy(run), abs=1e-6)
    assert summary["final_test_acc"] != pytest.approx(0.1, abs=0.05)  # it learned something


# -- eval and compare --------------------------------------------------------------------------
def test_eval_writes_accuracy_per_class_and_confusion(tmp_path):
    run = tmp_path / "run"
    summary = train(tiny("epochs=2"), run, verbose=0)
    result = evaluate_checkpoint(run / "last.pt", verbose=0)
    out = run / "eval-last" / "test"
    assert json.loads((out / "eval.json").read_text()) == result
    assert result["top1"] == pytest.approx(summary["final_test_acc"], abs=1e-6)
    assert result["top5"] >= result["top1"] and result["samples"] == 360 and result["epoch"] == 2
    with open(out / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true \\ predicted", *[str(c) for c in range(10)]]
    matrix = torch.tensor([[int(v) for v in r[1:]] for r in rows[1:]])
    labels = build_datasets("digits").test.labels
    assert matrix.sum(1).tolist() == torch.bincount(labels, minlength=10).tolist()
    assert matrix.trace().item() / 360 == pytest.approx(result["top1"], abs=1e-6)
    per_class = (matrix.diag() / matrix.sum(1)).tolist()
    assert list(result["per_class_accuracy"].values()) == pytest.approx(per_class)
    with open(out / "per_class_accuracy.csv", newline="") as f:
        assert [float(r["accuracy"]) for r in csv.DictReader(f)] == pytest.approx(per_class)
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match=r"split 'val' is not available; the run has \['test'\]"):
        evaluate_checkpoint(run / "last.pt", tmp_path / "e", split="val", verbose=0)


def test_compare_tabulates_seeds_and_skips_finished_runs(tmp_path, capsys):
    configs = [("a-ce", tiny()), ("b-cc", tiny(losses=[{"name": "ce"}, {"name": "cc"}]))]
    out = tmp_path / "cmp"
    results = compare(configs, seeds=2, out_dir=out)
    for r, (label, _) in zip(results, configs, strict=True):
        accs = [
            json.loads((out / label / f"seed{s}" / "summary.json").read_text())["final_test_acc"]
            for s in (0, 1)
        ]
        assert r.label == label and r.seeds == [0, 1] and r.test_acc == accs
        assert r.mean == pytest.approx(statistics.mean(accs))
        assert r.std == pytest.approx(statistics.stdev(accs))
    seeds = [
        load_checkpoint(out / "a-ce" / f"seed{s}" / "last.pt")["config"]["seed"] for s in (0, 1)
    ]
    assert seeds == [0, 1]
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["config"] for r in rows] == ["a-ce", "b-cc"]
    assert float(rows[1]["test_acc_mean"]) == pytest.approx(results[1].mean, abs=1e-6)
    md = (out / "results.md").read_text()
    assert "| b-cc | convnet_small | ce + cc |" in md
    assert f"{100 * results[0].mean:.2f} ± {100 * results[0].std:.2f}" in md
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"

    capsys.readouterr()
    stamp = (out / "a-ce" / "seed0" / "last.pt").stat().st_mtime_ns
    again = compare(configs, seeds=2, out_dir=out)
    assert [r.test_acc for r in again] == [r.test_acc for r in results]
    assert capsys.readouterr().out.count("finished earlier") == 4
    assert (out / "a-ce" / "seed0" / "last.pt").stat().st_mtime_ns == stamp

    with pytest.raises(ConfigError, match=r"seed0 holds a run of a different config"):
        compare([("a-ce", tiny("optim.lr=0.01"))], seeds=1, out_dir=out)
    with pytest.raises(ConfigError, match="two configs have the same name 'a-ce'"):
        compare([configs[0], configs[0]], seeds=1, out_dir=out)


def test_runs_written_before_the_schema_gained_keys_still_resume_and_are_skipped(tmp_path, capsys):
    """A run's config.yaml and checkpoint lack keys added to the schema later (they have
    defaults): compare still recognises the run and train --resume continues it."""
    import yaml

    config = tiny()
    out = tmp_path / "cmp"
    compare([("a", config)], seeds=1, out_dir=out)
    run = out / "a" / "seed0"
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert {"distributed", "on_nonfinite"} <= set(stored)
    older = {k: v for k, v in stored.items() if k not in ("distributed", "on_nonfinite")}
    older["data"] = {k: v for k, v in stored["data"].items() if k != "sampler"}  # checked on resume
    (run / "config.yaml").write_text(yaml.safe_dump(older))
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            state = load_checkpoint(run / name)
            state["config"] = {k: older[k] for k in state["config"] if k in older}
            save_checkpoint(state, run / name)
    capsys.readouterr()
    compare([("a", config)], seeds=1, out_dir=out)
    assert capsys.readouterr().out.count("finished earlier") == 1
    summary = train(tiny(epochs=2, seed=0), run, resume=True, verbose=0)
    assert summary["epochs"] == 2 and summary["finished"]
    # a stored config that no longer validates is another config, not a crash
    (run / "config.yaml").write_text(yaml.safe_dump({**older, "epochz": 1}))
    with pytest.raises(ConfigError, match="holds a run of a different config"):
        compare([("a", tiny(epochs=2))], seeds=1, out_dir=out)
