"""The tuning evidence machinery (no training): the README block from ``tune_<dataset>.json``,
and the study's parts whose every loss is tuned."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str, path: Path) -> ModuleType:
    for folder in (BENCH, BENCH / "study"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return _load("chanloss_bench_report_tune", BENCH / "report.py")


@pytest.fixture(scope="module")
def parts() -> ModuleType:
    return _load("chanloss_study_parts_tune", BENCH / "study" / "parts.py")


MACHINE = {"cpu_model": "Test CPU", "cpu_count": 2, "torch": "2.x", "torch_threads": 1,
           "git": {"commit": "0123456789abcdef", "dirty": False}}  # fmt: skip


def _acc(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return {"accs": values, "mean": mean, "std": std}


def _tune_json(quick: bool = False) -> dict:
    def gain(diff: float, se: float) -> dict:
        return {"diff": diff, "se": se, "beyond": abs(diff) > 2 * se}

    return {
        "dataset": "digits",
        "quick": quick,
        "recipe": {"model": {"name": "convnet_small"}},
        "epochs": 10,
        "trials_per_search": 8,
        "pruner": "median",
        "jobs": 2,
        "seeds": [1, 2, 3],
        "searches": {
            "cc": {
                "chosen": {"weight": 0.0123, "reduction": 4, "pair_reduction": "sum"},
                "best_val_acc": 0.95,
                "complete": 5,
                "pruned": 3,
                "search_wall_s": 200.0,
            },
            "mc": {
                "chosen": {"alpha": 0.5, "beta": 2.0, "keep_ratio": 1.0, "pool": "avg"},
                "best_val_acc": 0.96,
                "complete": 6,
                "pruned": 2,
                "search_wall_s": 250.0,
            },
        },  # fmt: skip
        "results": {
            "ce": {"test": _acc([0.95, 0.96, 0.97])},
            "cc-default": {"test": _acc([0.90, 0.91, 0.92])},
            "cc-tuned": {"test": _acc([0.95, 0.96, 0.97])},
            "mc-default": {"test": _acc([0.94, 0.95, 0.96])},
            "mc-tuned": {"test": _acc([0.96, 0.97, 0.98])},
        },
        "comparisons": {
            "cc": {"tuned_vs_default": gain(0.05, 0.008), "tuned_vs_ce": gain(0.0, 0.008)},
            "mc": {"tuned_vs_default": gain(0.02, 0.008), "tuned_vs_ce": gain(0.01, 0.008)},
        },
        "wall_s": 900.0,
        "machine": MACHINE,
    }


def test_report_shows_tuned_against_default_and_ce(tmp_path: Path, report: ModuleType) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "tune_digits.json").write_text(json.dumps(_tune_json()))
    readme = tmp_path / "README.md"
    readme.write_text("# T\n")
    assert report.main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "### Tuning with `chanloss tune`" in text
    assert (
        "**digits** (convnet_small, 10 epochs, 8 trials per search, median pruner, 2 jobs" in text
    )
    assert "15 min wall-clock for the invocation that wrote the file" in text
    assert "| CE | 96.00 ± 1.00 | | |" in text
    assert "| CE + CC-Loss, defaults | 91.00 ± 1.00 | | |" in text
    assert (
        "| CE + CC-Loss, tuned | 96.00 ± 1.00 | weight=0.0123, reduction=4, pair_reduction=sum "
        "| 5 complete + 3 pruned trials, best val 95.00 %, 3 min in that invocation |"
    ) in text
    assert (
        "- digits, CC-Loss: tuned vs defaults +5.00 points (2 SE = 1.60): **beyond noise**; "
        in text
    )
    assert "tuned vs CE +0.00 points (2 SE = 1.60): within noise." in text
    # quick results are not reported
    (results / "tune_digits.json").write_text(json.dumps(_tune_json(quick=True)))
    assert report.main(["--results", str(results), "--readme", str(readme)]) == 0
    assert "Tuning with" not in readme.read_text()


def test_tuned_parts_give_every_loss_the_same_search(parts: ModuleType) -> None:
    from chanloss.training import load_config
    from chanloss.training.search import resolve_space

    part = parts.PARTS["tuned-finegrained"]
    assert part.kind == "tuned" and part.column == "finegrained, every loss tuned"
    items = parts.tuned_search_configs(part)
    assert [i["label"] for i in items] == list(parts.STUDY_LOSSES)  # the baselines included
    for item in items:
        raw = item["raw"]
        assert raw["data"]["val_fraction"] == parts.SWEEP_VAL_FRACTION  # chosen on validation
        dims, _ = resolve_space(load_config(raw={**raw, "seed": 0}))
        names = [d.name for d in dims]
        assert "optim.lr" in names, item["label"]  # CE gets a search too
        if item["label"] not in ("ce",):
            assert len(names) >= 2, item["label"]  # plus the loss's own space
    best = {"mc": {"losses": [{"name": "ce"}, {"name": "mc", "alpha": 0.2}], "optim": {"lr": 0.03}}}
    (study,) = parts.tuned_study_configs(part, best)
    assert study["raw"]["data"]["val_fraction"] == 0.0  # then trained on the full split
    assert study["raw"]["losses"][1]["alpha"] == 0.2 and study["raw"]["optim"]["lr"] == 0.03
    assert study["params"] == {"lr": 0.03, "alpha": 0.2}
    load_config(raw=study["raw"])
    assert parts.tuned_search_configs(part, ["ce", "arcface"])[1]["label"] == "arcface"
    short = parts.PARTS["tuned-finegrained-short"]
    assert short.column == "finegrained, CE and MC only, 5 trials, every loss tuned"
    assert [i["label"] for i in parts.tuned_search_configs(short)] == ["ce", "mc"]
    assert short.trials == 5 and parts.recipe(short) == parts.recipe(part)


def test_report_marks_the_tuned_columns(tmp_path: Path, report: ModuleType) -> None:
    results = tmp_path / "results"
    results.mkdir()
    row = {"part": "tuned-digits", "dataset": "digits", "model": "convnet_small", "label": "ce",
           "losses": "ce", "params": json.dumps({"lr": 0.04}), "seeds": 3, "finished_seeds": 3,
           "diverged_seeds": 0, "test_acc_mean": "0.970000", "test_acc_std": "0.010000",
           "test_accs": "0.96;0.97;0.98", "train_time_mean_s": "3.0", "epochs": 30}  # fmt: skip
    with open(results / "study_tuned-digits.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    meta = {"part": "tuned-digits", "kind": "tuned", "dataset": "digits",
            "column": "digits, every loss tuned", "recipe": {"model": {"name": "convnet_small"}},
            "epochs": 30, "complete": True, "machine": MACHINE}  # fmt: skip
    (results / "study_tuned-digits.json").write_text(json.dumps(meta))
    readme = tmp_path / "README.md"
    readme.write_text("# T\n")
    assert report.main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| loss | digits, every loss tuned |" in text
    assert "Columns marked *every loss tuned* are the fair comparison" in text
