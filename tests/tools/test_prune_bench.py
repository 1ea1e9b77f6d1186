"""benchmarks/bench_prune.py's bookkeeping on hand-made rows (no training): the table, the
CPLI-vs-best-baseline verdicts, the MC-vs-CE comparison and merging per-process files."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("chanloss_bench_prune", BENCH / "bench_prune.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(loss: str, method: str, seed: int, finetuned: float, original: float = 0.9) -> dict:
    return {
        "setup": "s",
        "loss": loss,
        "seed": seed,
        "speedup_target": 2.0,
        "method": method,
        "speedup": 2.1,
        "macs_before": 1000,
        "macs_after": 470,
        "params_after": 10,
        "test_original": original,
        "test_pruned": 0.5,
        "test_finetuned": finetuned,
        "latency64_before_ms": 10.0,
        "latency64_after_ms": 5.0,
        "latency1_before_ms": 1.0,
        "latency1_after_ms": 0.8,
        "prune_s": 1.0,
        "prune_cpu_s": 1.0,
        "cpli_mix": None,
    }


def _rows() -> list[dict]:
    accs = {
        # CE: CPLI clearly ahead of the best baseline (l1); MC: CPLI and taylor overlap
        ("ce", "cpli"): [0.80, 0.81, 0.82],
        ("ce", "l1"): [0.70, 0.71, 0.72],
        ("ce", "bn_scale"): [0.60, 0.61, 0.62],
        ("mc", "cpli"): [0.80, 0.70, 0.90],
        ("mc", "taylor"): [0.79, 0.71, 0.88],
        ("mc", "l1"): [0.50, 0.50, 0.50],
    }
    return [
        _row(loss, method, seed, acc)
        for (loss, method), values in accs.items()
        for seed, acc in enumerate(values)
    ]


def test_cells_and_verdicts(bench):
    summary = bench.summarise(_rows())
    cells = {(c["loss"], c["method"]): c for c in summary["cells"]}
    mean, std = cells[("ce", "cpli")]["test_finetuned"]
    assert mean == pytest.approx(0.81) and std == pytest.approx(0.01)
    assert cells[("ce", "cpli")]["latency64_ratio"] == pytest.approx(2.0)
    verdicts = {v["loss"]: v for v in summary["cpli_vs_best_baseline"]}
    assert verdicts["ce"]["best_baseline"] == "l1"
    assert verdicts["ce"]["cpli_minus_best"] == pytest.approx(0.10)
    assert verdicts["ce"]["standard_error"] == pytest.approx(math.sqrt(2 * 0.01**2 / 3))
    assert verdicts["ce"]["verdict"] == "CPLI better"
    assert verdicts["mc"]["best_baseline"] == "taylor"
    assert verdicts["mc"]["verdict"] == "cannot tell"
    # MC vs CE for the methods both have: the drop (original - fine-tuned) compared
    pairs = {x["method"]: x for x in summary["mc_vs_ce"]}
    assert set(pairs) == {"cpli", "l1"}
    assert pairs["cpli"]["drop_mc"] == pytest.approx(0.1)
    assert not pairs["cpli"]["mc_loses_less"] and not pairs["l1"]["mc_loses_less"]


def test_one_seed_is_never_beyond_noise(bench):
    rows = [_row("ce", "cpli", 0, 0.9), _row("ce", "l1", 0, 0.1)]
    (verdict,) = bench.summarise(rows)["cpli_vs_best_baseline"]
    assert verdict["verdict"] == "cannot tell"


def test_cpli_is_compared_with_baselines_of_the_same_refit_setting(bench):
    rows = [
        _row("ce", label, seed, acc)
        for label, values in {
            "cpli+refit": [0.80, 0.81, 0.82],
            "l1+refit": [0.60, 0.61, 0.62],
            "cpli": [0.50, 0.51, 0.52],
            "l1": [0.90, 0.91, 0.92],  # better than cpli+refit, but without the refit
        }.items()
        for seed, acc in enumerate(values)
    ]
    verdicts = {v["cpli"]: v for v in bench.summarise(rows)["cpli_vs_best_baseline"]}
    assert verdicts["cpli+refit"]["best_baseline"] == "l1+refit"
    assert verdicts["cpli+refit"]["verdict"] == "CPLI better"
    assert verdicts["cpli"]["best_baseline"] == "l1"
    assert verdicts["cpli"]["verdict"] == "CPLI worse"


def test_merge_and_its_verdicts(bench, tmp_path):
    rows = _rows()
    parts = []
    for i, seeds in enumerate(((0, 1), (2,))):
        part = {
            "benchmark": "prune",
            "quick": False,
            "finished": True,
            "machine": {"cpu_model": "test CPU", "torch": "x", "git": {"commit": "abc"}},
            "settings": {
                "seeds": len(seeds),
                "speedups": [2.0],
                "finetune_epochs": 1,
                "setups": {"s": {}},
            },
            "rows": [r for r in rows if r["seed"] in seeds],
            "summary": {},
            "time_s": 5.0,
        }
        parts.append(tmp_path / f"p{i}.json")
        parts[-1].write_text(json.dumps(part))
    merged = bench.merge(parts)
    assert merged["settings"]["seeds"] == 3 and len(merged["rows"]) == len(rows)
    assert merged["time_s"] == 10.0
    verdicts = merged["summary"]["cpli_vs_best_baseline"]
    assert [(v["loss"], v["best_baseline"], v["verdict"]) for v in verdicts] == [
        ("ce", "l1", "CPLI better"),  # +10 points, 2 SE = 1.6 points
        ("mc", "taylor", "cannot tell"),  # +0.7 points against 2 SE of about 10
    ]
    assert verdicts[0]["cpli_minus_best"] == pytest.approx(0.10)
    assert [x["mc_loses_less"] for x in merged["summary"]["mc_vs_ce"]] == [False, False]


def test_report_renders_the_pruning_section(bench, tmp_path):
    spec = importlib.util.spec_from_file_location(
        "chanloss_bench_report_p", BENCH.parent / "tools" / "results_page.py"
    )
    assert spec is not None and spec.loader is not None
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    rows = [{**r, "setup": "resnet20-finegrained"} for r in _rows()]
    data = {
        "benchmark": "prune",
        "quick": False,
        "finished": True,
        "machine": {"cpu_model": "test CPU", "cpu_count": 2, "torch": "x"},
        "settings": {"seeds": 3, "speedups": [2.0], "finetune_epochs": 1},
        "rows": rows,
        "summary": bench.summarise(rows),
    }
    (tmp_path / "prune_cpu.json").write_text(json.dumps(data))
    found = report.load(tmp_path)
    lines = report.prune_section(found.get("prune"), report.machine_line)
    assert lines[0] == "### Channel pruning (`chanloss prune`)"
    row = next(x for x in lines if x.startswith("| resnet20-finegrained | ce | 2x"))
    assert (
        "| 90.00 ± 0.00 | 81.00 ± 1.00 (50.0) | 71.00 ± 1.00 (50.0) | 61.00 ± 1.00 (50.0) | — |"
        in row
    )
    assert any("cpli − l1 = +10.0 pts" in x and "CPLI better" in x for x in lines)
    assert any("latency measured inside those runs 2.00x lower" in x for x in lines)
    ratio = {
        n: {"median": m, "min": m + 0.1}
        for n, m in {"2x/round8": 1.7, "2x/round1": 1.2, "4x/round8": 2.6, "4x/round1": 2.4}.items()
    }
    entry = {f"threads{t}/batch{b}": {"ratio": ratio} for t in (1, 2) for b in (1, 64)}
    latency = {"load_before": 1.0, "load_after": 2.0, "shortcuts": {"A": entry}}
    (tmp_path / "prune_latency_cpu.json").write_text(json.dumps(latency))
    lines = report.prune_section(report.load(tmp_path).get("prune"), report.machine_line)
    assert "| A | 2 | 1.70x (1.80x) | 1.20x (1.30x) | 2.60x (2.70x) | 2.40x (2.50x) |" in lines
    assert any("load average 1.0 before, 2.0 after" in x for x in lines)
    assert "### Channel pruning" in report.render(found, tmp_path)
    quick = {**data, "quick": True}
    (tmp_path / "prune_cpu.json").write_text(json.dumps(quick))
    assert report.prune_section(report.load(tmp_path).get("prune"), report.machine_line) == []
