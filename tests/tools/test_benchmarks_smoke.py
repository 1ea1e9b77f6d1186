"""Cheap checks of the benchmark and study machinery (no timing asserts, no training).

``tools/results_page.py`` on tiny fake results files must produce the expected Markdown and
touch only the marked README block; the scripts' argument parsing, the shared helpers, and the
study's protocol (configs valid, selection on validation only, resumable run status).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
from script_loader import BENCH, TOOLS, load_script


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return load_script("chanloss_bench_report", TOOLS / "results_page.py")


@pytest.fixture(scope="module")
def common() -> ModuleType:
    return load_script("chanloss_bench_common", BENCH / "_common.py")


MACHINE = {
    "cpu_model": "Test CPU 9000",
    "cpu_count": 2,
    "torch": "2.x",
    "torch_threads": 1,
    "git": {"commit": "0123456789abcdef", "dirty": False},
}


def _study_row(label: str, accs: list[float], diverged: int = 0) -> dict:
    mean = sum(accs) / len(accs)
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1))
    return {
        "part": "digits",
        "dataset": "digits",
        "model": "convnet_small",
        "label": label,
        "losses": "ce" if label == "ce" else f"ce+{label}",
        "params": json.dumps({"weight": 0.1} if label == "cc" else {}),
        "seeds": len(accs) + diverged,
        "finished_seeds": len(accs),
        "diverged_seeds": diverged,
        "test_acc_mean": f"{mean:.6f}",
        "test_acc_std": f"{std:.6f}",
        "test_accs": ";".join(f"{a:.6f}" for a in accs),
        "train_time_mean_s": "3.0",
        "epochs": 30,
    }


def _write_fake_results(root: Path, *, quick: bool = False) -> Path:
    results = root / "results"
    results.mkdir()
    rows = [
        _study_row("ce", [0.98, 0.97, 0.99]),
        _study_row("cc", [0.96, 0.97, 0.95]),  # lower than CE: "does not beat CE"
        _study_row("mc", [0.99, 0.97, 0.99], diverged=1),  # higher, within 2 SE
    ]
    with open(results / "study_digits.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (results / "study_digits_curves.png").write_bytes(b"png")
    meta = {
        "part": "digits",
        "kind": "study",
        "dataset": "digits",
        "recipe": {"model": {"name": "convnet_small"}},
        "epochs": 30,
        "complete": True,
        "quick": quick,
        "machine": MACHINE,
        "wall_time_s": 300.0,
        "run_time_sum_s": 290.0,
    }
    (results / "study_digits.json").write_text(json.dumps(meta))
    sweep = {
        "part": "sweep-digits",
        "kind": "sweep",
        "dataset": "digits",
        "complete": True,
        "quick": quick,
        "seeds": 3,
        "configs": 30,
        "val_fraction": 0.2,
        "chosen": {"cc": {"weight": 0.1, "reduction": 4}, "mc": {"alpha": 1.5, "beta": 5.0}},
        "chosen_val_acc": {"cc": [0.95, 0.01], "mc": [0.96, 0.02]},
        "machine": MACHINE,
        "run_time_sum_s": 600.0,
    }
    (results / "study_sweep-digits.json").write_text(json.dumps(sweep))

    def variant(ms: float) -> dict:
        return {"median_ms": ms, "p25_ms": ms, "p75_ms": ms, "min_ms": ms, "n": 3}

    def overhead(ratio: float) -> dict:
        return {
            "ratio_of_medians": ratio,
            "per_round_ratio_median": ratio,
            "per_round_ratio_p25": ratio,
            "per_round_ratio_p75": ratio,
            "within_target": ratio <= 1.1,
        }

    step = {
        "quick": quick,
        "machine": MACHINE,
        "target_overhead": 0.1,
        "results": [
            {
                "model": "resnet20",
                "image_size": 32,
                "batch": 128,
                "num_classes": 10,
                "note": "unwidened",
                "variants": {
                    "ce": variant(100.0),
                    "ce+cc": variant(104.0),
                    "ce+mc": variant(125.0),
                },
                "overhead": {"ce+cc": overhead(1.04), "ce+mc": overhead(1.25)},
            }
        ],
    }
    (results / "train_step_cpu.json").write_text(json.dumps(step))
    return results


README = "# Title\n\nIntro text.\n\n<!-- results:start -->\nold block\n<!-- results:end -->\n\n## After\nkept\n"


def test_report_renders_tables_verdicts_and_keeps_the_rest(tmp_path: Path, report: ModuleType):
    results = _write_fake_results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert report.main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nIntro text.\n\n<!-- results:start -->\n")
    assert text.endswith("<!-- results:end -->\n\n## After\nkept\n")
    assert "old block" not in text
    assert "| loss | digits |" in text
    assert "| ce | 98.00 ± 1.00 |" in text
    assert "| cc | 96.00 ± 1.00 |" in text
    assert "| mc | **98.33 ± 1.15** (1 of 4 seeds diverged) |" in text  # best: bold
    assert "digits: **CC-Loss does not beat CE** (96.00 % vs 98.00 %, -2.00 points)." in text
    assert "MC-Loss has a higher mean than CE" in text and "**not a reliable win**" in text
    assert "digits: highest mean mc (98.33 %); CC-Loss ranks 3 of 3, MC-Loss ranks 1 of 3" in text
    assert "CC-Loss: weight=0.1, reduction=4 (val 95.00 ± 1.00 %)" in text
    assert "Test CPU 9000 (2 cores, 1 torch thread), torch 2.x, commit `0123456789`" in text
    assert "[digits](results/study_digits_curves.png)" in text
    row = "| resnet20 32 px, batch 128, K=10 | 100.0 | 104.0 | 125.0 |"
    assert row in text
    assert "1.040 (rounds 1.04–1.04; meets target)" in text
    assert "1.250 (rounds 1.25–1.25; **misses** target)" in text
    # a second run changes nothing; --check agrees, and notices a hand edit
    assert report.main(["--results", str(results), "--readme", str(readme), "--check"]) == 0
    readme.write_text(text.replace("| cc | 96.00", "| cc | 99.99"))
    assert report.main(["--results", str(results), "--readme", str(readme), "--check"]) == 1


def test_report_appends_markers_and_ignores_quick_results(tmp_path: Path, report: ModuleType):
    results = _write_fake_results(tmp_path, quick=True)
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    assert report.main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\n<!-- results:start -->\n## Results\n")
    assert text.endswith("<!-- results:end -->\n")
    assert "No study results yet" in text and "No benchmark results yet" in text
    assert "| cc |" not in text


def test_report_rejects_a_broken_block(tmp_path: Path, report: ModuleType):
    with pytest.raises(SystemExit, match="broken results block"):
        report.replace_block("<!-- results:end -->\n<!-- results:start -->\n", "x")


def test_single_seed_win_is_not_called_a_win(report: ModuleType):
    row = {"test_acc_mean": 0.9, "test_acc_std": 0.0, "finished_seeds": 1}
    ce = {"test_acc_mean": 0.8, "test_acc_std": 0.0, "finished_seeds": 1}
    assert "not evidence of a win" in report.verdict("mc", row, ce, "digits")


def test_bench_argument_parsing(common: ModuleType):
    losses = load_script("chanloss_bench_losses", BENCH / "bench_losses.py")
    args = losses.build_parser().parse_args(["--quick", "--device", "cuda", "--losses", "cc,mc"])
    assert (args.quick, args.device, args.losses, args.threads) == (True, "cuda", ["cc", "mc"], 1)
    step = load_script("chanloss_bench_train_step", BENCH / "bench_train_step.py")
    args = step.build_parser().parse_args(["--setups", "resnet20", "--rounds", "4"])
    assert (args.setups, args.rounds, args.quick) == (["resnet20"], 4, False)
    with pytest.raises(SystemExit):
        step.build_parser().parse_args(["--rounds", "0"])
    scaling = load_script("chanloss_bench_scaling", BENCH / "bench_scaling.py")
    args = scaling.build_parser().parse_args(["--b-values", "8,16", "--no-plot"])
    assert args.B_values == [8, 16] and args.no_plot
    with pytest.raises(SystemExit):
        scaling.build_parser().parse_args(["--k-values", "10,x"])
    run_all = load_script("chanloss_run_benchmarks", TOOLS / "run_benchmarks.py")
    args = run_all.build_parser().parse_args(["--quick", "--device", "cuda"])
    assert run_all.command("cc_loss", args) is None  # CPU-only benchmark
    cmd = run_all.command("losses", args)
    assert cmd[1:] == [str(BENCH / "bench_losses.py"), "--quick", "--device", "cuda"]
    args = run_all.build_parser().parse_args(["--quick"])
    assert run_all.command("mc_loss", args)[-2:] == [
        "--out",
        str(BENCH / "results/quick/mc_loss_cpu.json"),
    ]
    with pytest.raises(SystemExit):
        run_all.build_parser().parse_args(["--only", "nope"])


def test_common_stats_timing_order_and_json(tmp_path: Path, common: ModuleType):
    st = common.stats([0.004, 0.001, 0.002, 0.003])
    assert st == {"median_ms": 2.5, "p25_ms": 1.75, "p75_ms": 3.25, "min_ms": 1.0, "n": 4}
    calls: list[str] = []
    samples = common.time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=2, warmup=1
    )
    assert calls == ["a", "b", "a", "b", "b", "a"]  # warm-up, then rotating rounds
    assert [len(v) for v in samples.values()] == [2, 2]
    out = tmp_path / "sub" / "x.json"
    common.write_json(out, {"k": [1, 2]})
    assert json.loads(out.read_text()) == {"k": [1, 2]}
    assert [p.name for p in out.parent.iterdir()] == ["x.json"]  # no temporary file left
    info = common.machine_info("cpu")
    assert {"cpu_model", "cpu_count", "torch", "torch_threads", "git"} <= set(info)


def _add_part(tmp_path: Path, report: ModuleType, part: str, rows: list[dict], **meta) -> str:
    """Fake results of another study part beside the digits ones; the README rendered."""
    results = _write_fake_results(tmp_path)
    rows = [{**row, "part": part} for row in rows]
    with open(results / f"study_{part}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    data = json.loads((results / "study_digits.json").read_text())
    data.update(part=part, **meta)
    (results / f"study_{part}.json").write_text(json.dumps(data))
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert report.main(["--results", str(results), "--readme", str(readme)]) == 0
    return readme.read_text()


def test_report_gives_a_second_backbone_its_own_column(tmp_path: Path, report: ModuleType):
    rows = [
        {**_study_row("ce", [0.97, 0.98, 0.99]), "model": "resnet20"},
        {**_study_row("mc", [0.99, 0.99, 0.98]), "model": "resnet20"},
    ]
    text = _add_part(
        tmp_path,
        report,
        "digits-resnet20",
        rows,
        column="digits, resnet20",
        recipe={"model": {"name": "resnet20"}},
        chosen_from="sweep-digits",
        chosen={"mc": {"beta": 5.0}},
    )
    assert "| loss | digits | digits, resnet20 |" in text
    assert "| ce | 98.00 ± 1.00 | 98.00 ± 1.00 |" in text
    assert "| cc | 96.00 ± 1.00 | — |" in text
    assert "— : not trained in that part" in text
    assert "CC/MC settings chosen on validation by `sweep-digits` (the ConvNet)" in text
    assert "digits, resnet20: MC-Loss has a higher mean than CE" in text


def test_report_gives_the_defaults_rows_their_own_verdicts(tmp_path: Path, report: ModuleType):
    rows = [_study_row("ce", [0.97, 0.98, 0.99]), _study_row("cc_default", [0.90, 0.91, 0.92])]
    text = _add_part(
        tmp_path, report, "defaults-digits", rows, column="digits, current defaults", chosen={}
    )
    assert "| loss | digits | digits, current defaults |" in text
    assert "| cc_default | — | 91.00 ± 1.00 |" in text
    label = "CC-Loss (margin form, side branch: the defaults before the gate)"
    assert f"{label} does not beat CE" in text
    assert (
        f"digits, current defaults: highest mean ce (98.00 %); {label} "
        "ranks 2 of 2 by mean (ties share a rank)."
    ) in text
    assert "reused unchanged" not in text  # nothing in the part was chosen by a sweep
