"""Cheap checks of the benchmark and study machinery (no timing asserts, no training).

``tools/results_page.py`` on tiny fake results files must produce the expected Markdown and
touch only the marked README block; the scripts' argument parsing, the shared helpers, and the
study's protocol (configs valid, selection on validation only, resumable run status).
"""

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
TOOLS = BENCH.parent / "tools"


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
    return _load("chanloss_bench_report", TOOLS / "results_page.py")


@pytest.fixture(scope="module")
def common() -> ModuleType:
    return _load("chanloss_bench_common", BENCH / "_common.py")


@pytest.fixture(scope="module")
def parts() -> ModuleType:
    return _load("chanloss_study_parts", BENCH / "study" / "parts.py")


@pytest.fixture(scope="module")
def run_study() -> ModuleType:
    return _load("chanloss_study_run", BENCH / "study" / "run_study.py")


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
    losses = _load("chanloss_bench_losses", BENCH / "bench_losses.py")
    args = losses.build_parser().parse_args(["--quick", "--device", "cuda", "--losses", "cc,mc"])
    assert (args.quick, args.device, args.losses, args.threads) == (True, "cuda", ["cc", "mc"], 1)
    step = _load("chanloss_bench_train_step", BENCH / "bench_train_step.py")
    args = step.build_parser().parse_args(["--setups", "resnet20", "--rounds", "4"])
    assert (args.setups, args.rounds, args.quick) == (["resnet20"], 4, False)
    with pytest.raises(SystemExit):
        step.build_parser().parse_args(["--rounds", "0"])
    scaling = _load("chanloss_bench_scaling", BENCH / "bench_scaling.py")
    args = scaling.build_parser().parse_args(["--b-values", "8,16", "--no-plot"])
    assert args.B_values == [8, 16] and args.no_plot
    with pytest.raises(SystemExit):
        scaling.build_parser().parse_args(["--k-values", "10,x"])
    run_all = _load("chanloss_bench_run_all", BENCH / "run_all.py")
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


def test_study_configs_are_valid_and_sweeps_use_validation(parts: ModuleType):
    from chanloss.config import load_config

    for part in parts.PARTS.values():
        if part.kind != "sweep":
            continue
        items = parts.sweep_configs(part)
        assert len(items) == sum(len(parts.grid(g)) for g in part.grids.values())
        for item in items:
            config = load_config(raw=item["raw"])
            assert config.data.val_fraction == parts.SWEEP_VAL_FRACTION > 0
            assert [e.name for e in config.losses] == ["ce", item["loss"]]
    chosen = {"cc": {"weight": 0.1, "reduction": 16}, "mc": {"beta": 5.0}}
    study = parts.study_configs(parts.PARTS["digits"], chosen)
    by_label = {i["label"]: load_config(raw=i["raw"]) for i in study}
    assert set(by_label) == set(parts.STUDY_LOSSES)
    assert all(c.data.val_fraction == 0.0 for c in by_label.values())
    cc = by_label["cc"].losses[1]
    # a validated config names every parameter (the defaults too): check what the study set
    assert (cc.name, cc.weight) == ("cc", 0.1)
    assert {"form": "ratio", "reduction": 16}.items() <= cc.params().items()
    assert by_label["center"].losses[1].params()["center_update"] == "sgd"  # as recorded
    assert by_label["mc"].losses[1].params()["beta"] == 5.0
    with pytest.raises(ValueError, match=r"missing for \['mc'\]"):
        parts.study_configs(parts.PARTS["digits"], {"cc": {}})


def test_choose_picks_best_validation_mean_then_lower_std(parts: ModuleType):
    rows = [
        {"loss": "cc", "params": {"w": 1}, "val_acc_mean": 0.90, "val_acc_std": 0.01},
        {"loss": "cc", "params": {"w": 2}, "val_acc_mean": 0.95, "val_acc_std": 0.03},
        {"loss": "cc", "params": {"w": 3}, "val_acc_mean": 0.95, "val_acc_std": 0.02},
        {"loss": "mc", "params": {"b": 1}, "val_acc_mean": math.nan, "val_acc_std": math.nan},
        {"loss": "mc", "params": {"b": 2}, "val_acc_mean": 0.5, "val_acc_std": 0.0},
    ]
    assert parts.choose(rows) == {"cc": {"w": 3}, "mc": {"b": 2}}
    with pytest.raises(ValueError, match="must not carry test accuracy"):
        parts.choose([{**rows[0], "test_acc_mean": 0.9}])


def test_run_status_skips_finished_and_refuses_another_config(
    tmp_path: Path, parts: ModuleType, run_study: ModuleType
):
    from chanloss.config import config_to_dict, dump_config, load_config

    item = parts.sweep_configs(parts.PARTS["sweep-digits"])[0]
    config = load_config(raw={**item["raw"], "seed": 0})
    run_dir = tmp_path / "run"
    assert run_study.run_status(run_dir, config_to_dict(config)) == "new"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_config(config))
    (run_dir / "last.pt").write_bytes(b"")
    assert run_study.run_status(run_dir, config_to_dict(config)) == "resume"
    summary = {"finished": True, "epochs": config.epochs}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert run_study.run_status(run_dir, config_to_dict(config)) == "done"
    other = config_to_dict(load_config(raw={**item["raw"], "seed": 1}))
    with pytest.raises(SystemExit, match="different config"):
        run_study.run_status(run_dir, other)


def test_sweep_outputs_carry_no_test_accuracy(run_study: ModuleType):
    assert not [c for c in run_study.SWEEP_COLUMNS if "test" in c]
    assert "val_acc_mean" in run_study.SWEEP_COLUMNS
    assert "test_acc_mean" in run_study.STUDY_COLUMNS


def test_curve_plot_from_metrics_files(tmp_path: Path, run_study: ModuleType):
    runs = []
    for seed, accs in enumerate(([0.5, 0.8, 0.9], [0.6, 0.7, 1.0])):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        lines = ["epoch,train_loss,test_acc"] + [
            f"{e + 1},{1.0 / (e + 1)},{a}" for e, a in enumerate(accs)
        ]
        (run / "metrics.csv").write_text("\n".join(lines) + "\n")
        runs.append(run)
    assert run_study._curve(runs[0], "test_acc") == {1: 0.5, 2: 0.8, 3: 0.9}
    out = tmp_path / "curves.png"
    run_study.plot_curves({"ce": runs}, "test_acc", "title", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curve_zoom_ignores_one_diverged_loss_and_every_panel_is_labelled(
    tmp_path: Path, run_study: ModuleType
):
    good = [([20, 25, 30], [94.0 + i / 10, 95.0, 96.0]) for i in range(12)]
    diverged = ([20, 25, 30], [67.0, 75.0, 82.0])
    low, high = run_study.zoom_limits([*good, diverged], 20)
    assert 93.0 < low < 94.0 and high == 96.5  # not stretched down to 67 %
    assert run_study.zoom_limits([diverged, good[0]], 20)[0] == 66.5  # two lines: the minimum

    groups = {}
    for label, accs in (("ce", [0.5, 0.8, 0.9]), ("arcface", [0.1, 0.2, 0.3])):
        run = tmp_path / label
        run.mkdir()
        rows = [f"{e + 1},{1.0 / (e + 1)},{a}" for e, a in enumerate(accs)]
        (run / "metrics.csv").write_text("\n".join(["epoch,train_loss,test_acc", *rows]) + "\n")
        groups[label] = [run]
    fig = run_study.curves_figure(groups, "test_acc", "title")
    try:
        assert all(ax.get_title() and ax.get_ylabel() and ax.get_xlabel() for ax in fig.axes)
        fig.canvas.draw()
        legend = fig.legends[0].get_window_extent()
        inside = fig.bbox
        assert inside.x0 <= legend.x0 and legend.x1 <= inside.x1
        assert inside.y0 <= legend.y0 and legend.y1 <= inside.y1
        panels = [ax.get_window_extent() for ax in fig.axes]
        assert all(legend.y1 <= p.y0 for p in panels)  # below the panels, covering none
    finally:
        run_study.common.pyplot().close(fig)
    for run in groups.values():  # test accuracy only after the last epoch: training accuracy
        lines = ["epoch,train_loss,train_acc,test_acc", "1,1.0,0.4,", "2,0.5,0.6,0.55"]
        (run[0] / "metrics.csv").write_text("\n".join(lines) + "\n")
    fig = run_study.curves_figure(groups, "test_acc", "part: {accuracy} per epoch")
    try:
        assert fig._suptitle.get_text() == "part: train accuracy per epoch"
        assert fig.axes[0].get_ylabel() == "train accuracy (%)"
        assert list(fig.axes[0].get_lines()[0].get_ydata()) == [40.0, 60.0]
    finally:
        run_study.common.pyplot().close(fig)


def test_resnet20_parts_swap_the_backbone_and_train_the_named_losses(parts: ModuleType):
    from chanloss.config import load_config

    chosen = {"cc": {"weight": 0.1}, "mc": {"beta": 5.0}}
    for name in ("digits-resnet20", "mnist5k-resnet20", "finegrained-resnet20"):
        part = parts.PARTS[name]
        convnet = parts.PARTS[part.dataset]
        assert part.sweep_part == convnet.sweep_part  # CC/MC values come from the ConvNet sweep
        assert part.column == f"{part.dataset}, resnet20" and convnet.column == part.dataset
        items = parts.study_configs(part, chosen)
        assert [i["label"] for i in items] == list(parts.CORE_LOSSES)
        for item in items:
            config = load_config(raw=item["raw"])
            assert config.model.name == "resnet20" and config.data.name == part.dataset
            assert item["raw"]["model"] == {"name": "resnet20"} and config.data.val_fraction == 0.0
        mc = next(i for i in items if i["label"] == "mc")
        assert mc["raw"]["losses"][1] == {"name": "mc", "beta": 5.0}
        # the recipe apart from the model is the data set's
        expected = {k: v for k, v in parts.BASES[part.dataset].items() if k != "model"}
        assert {k: v for k, v in parts.recipe(part).items() if k != "model"} == expected
        # --only narrows within the part's losses; a loss outside them is not trained
        only = parts.study_configs(part, chosen, ["ce", "sphereface"])
        assert [i["label"] for i in only] == ["ce"]
    assert parts.recipe(parts.PARTS["digits"]) == parts.BASES["digits"]


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


def test_defaults_parts_train_the_changed_losses_at_their_current_defaults(parts: ModuleType):
    from chanloss.config import load_config
    from chanloss.losses import CCLoss, CenterLoss

    names = ("defaults-digits", "defaults-mnist5k", "defaults-finegrained")
    for name in (*names, "defaults-digits-resnet20"):
        part = parts.PARTS[name]
        if name in names:
            assert part.column == f"{part.dataset}, current defaults"
            assert parts.recipe(part) == parts.BASES[part.dataset]
        else:
            assert part.column == f"{part.dataset}, resnet20, current defaults"
            assert parts.recipe(part)["model"] == {"name": "resnet20"}
        items = parts.study_configs(part, {})  # no sweep values needed: nothing here is tuned
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
    labels = [i["label"] for i in parts.study_configs(parts.PARTS["digits"], {"cc": {}, "mc": {}})]
    assert "cc_default" not in labels and "center_default" not in labels
    with pytest.raises(ValueError, match="chosen values are missing"):
        parts.study_configs(parts.PARTS["digits"], {})


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
