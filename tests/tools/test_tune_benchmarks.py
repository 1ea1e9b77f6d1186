"""The tuning evidence machinery (no training): the README block from ``tune_<dataset>.json``,
and the study's parts whose every loss is tuned (benchmarks/study/run_study.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import ModuleType

import pytest
from script_loader import BENCH, TOOLS, load_script


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return load_script("chanloss_bench_report_tune", TOOLS / "results_page.py")


@pytest.fixture(scope="module")
def parts() -> ModuleType:
    return load_script("chanloss_study_run_tune", BENCH / "study" / "run_study.py")


MACHINE = {"cpu_model": "Test CPU", "cpu_count": 2, "torch": "2.x", "torch_threads": 1,
           "git": {"commit": "0123456789abcdef", "dirty": False}}  # fmt: skip


def _acc(values: list[float]) -> dict:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return {"accs": values, "mean": mean, "std": std}


def _tune_json(quick: bool = False) -> dict:
    def loss(diff: float, threshold: float, test_diff: float, test_se: float) -> dict:
        return {
            "counts": {"COMPLETE": 7, "PRUNED": 3, "FAIL": 0},
            "noise": {"std": 0.0123, "dof": 3},
            "learned": True,
            "chosen": {"alpha": 0.5, "beta": 2.0},
            "cv": {"diff": diff, "threshold": threshold, "detectable": 1.5 * threshold,
                   "p": 0.01 if abs(diff) > threshold else 0.4, "beyond": abs(diff) > threshold},
            "test": {"diff": test_diff, "se": test_se, "beyond": abs(test_diff) > 2 * test_se},
            "agrees": (abs(diff) > threshold and diff > 0)
            == (abs(test_diff) > 2 * test_se and test_diff > 0),
            "ce_gain_last_quarter": 0.004,
        }  # fmt: skip

    return {
        "dataset": "digits",
        "quick": quick,
        "recipe": {"model": {"name": "convnet_small", "width": 8}},
        "epochs": 20,
        "trials_per_search": 10,
        "jobs": 1,
        "losses": {
            "mc": loss(0.02, 0.01, 0.015, 0.005),  # a gain both ways
            "cc": loss(0.004, 0.01, 0.03, 0.005),  # no gain on CV, a gain on test
        },
        "wall_s": 900.0,
        "machine": MACHINE,
    }


def test_report_shows_the_verdict_next_to_the_test_result(
    tmp_path: Path, report: ModuleType
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    data = _tune_json()
    data["losses"]["cc"]["reconfirmed"] = {
        "command": "python benchmarks/bench_tune.py --reconfirm", "git": {"commit": "abcdef0123"},
        "wall_s": 900.0, "agrees": True,
        "earlier": [{"cv": {"diff": 0.049, "threshold": 0.0124, "beyond": True}, "agrees": False,
                     "git": {"commit": "68ab190abc"}}],
    }  # fmt: skip
    (results / "tune_digits.json").write_text(json.dumps(data))
    calibration = {
        "folds": 5,
        "rows": [{"kind": "null", "verdict": "no difference", "diff": 0.001, "threshold": 0.01}] * 19
        + [{"kind": "null", "verdict": "better", "diff": 0.02, "threshold": 0.01}]
        + [{"kind": "positive", "verdict": "better", "diff": 0.025, "threshold": 0.012}] * 2,
        "null_no_difference_rate": 0.95,
        "wall_s": 600.0,
        "machine": MACHINE,
    }  # fmt: skip
    (results / "tune_calibration.json").write_text(json.dumps(calibration))
    readme = tmp_path / "README.md"
    readme.write_text("# T\n")
    assert report.main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "### Tuning with `chanloss tune`: the verdict against the test split" in text
    assert (
        "| digits, MC-Loss | alpha=0.5, beta=2 | 7 + 3 pruned | 1.23 | +2.00 (±1.00; 1.50) | gain "
        "| - | +1.50 (1.00) | gain | yes |"
    ) in text
    assert (
        "| digits, CC-Loss | alpha=0.5, beta=2 | 7 + 3 pruned | 1.23 | +0.40 (±1.00; 1.50) " in text
    )
    assert "| cannot tell | - | +3.00 (1.00) | gain | **no** |" in text  # not beyond noise
    assert "CE's validation accuracy rose +0.40 points at most over the last quarter" in text
    assert (
        "- digits, CC-Loss: the confirmation was rerun on the stored search by "
        "`python tools/tune_results.py --reconfirm` (git abcdef0, 15 min); before it (git 68ab190): "
        "cross-validated +4.90 (±1.24), gain, agree with test: no."
    ) in text
    assert "python benchmarks/bench_tune.py --reconfirm" not in text  # shown as it is run now
    assert '"no difference" in **19 of 20** repeats (95 %)' in text
    assert '"gain" in **2 of 2** (mean cross-validated gain +2.50 points, threshold ±1.20)' in text
    # a file of this round: the answer, the stuck runs, the trials per hour, the unstable case
    data["losses"]["mc"].update(answer="cannot tell", stuck={"search": 1, "confirmation": 2},
                                trials_per_hour=41.4)  # fmt: skip
    data["losses"]["cc"]["run"] = {"command": "python benchmarks/bench_tune.py --losses cc",
                                   "wall_s": 720.0, "machine": MACHINE}  # fmt: skip
    (results / "tune_digits.json").write_text(json.dumps(data))
    calibration["unstable_config"] = {"optim": {"lr": 6.0}}
    calibration["rows"] = calibration["rows"] + [
        {"kind": "unstable", "verdict": "better", "diff": 0.02, "threshold": 0.01,
         "answer": "unstable", "runs": 10, "reruns": [1, 3],
         "stuck": [{"fold": 1}, {"fold": 3}, {"fold": 3}]},
        {"kind": "unstable", "verdict": "no difference", "diff": 0.0, "threshold": 0.01,
         "answer": "no difference", "runs": 10, "reruns": [], "stuck": []},
    ]  # fmt: skip
    (results / "tune_calibration.json").write_text(json.dumps(calibration))
    assert report.main(["--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert (
        "| digits, MC-Loss | alpha=0.5, beta=2 | 7 + 3 pruned (41) | 1.23 | +2.00 (±1.00; 1.50) "
        "| cannot tell | 1; 2 | +1.50 (1.00) | gain | yes |"
    ) in text
    assert "- digits, CC-Loss: from an earlier invocation, `python benchmarks/bench_tune.py " \
           "--losses cc` (git " in text  # fmt: skip
    assert (
        "(SGD 6.0, no warm-up): **3 of 24** fold runs flagged stuck (reruns included), stuck runs "
        'found in 1 of 2 repeats, the verdict "unstable" in **1 of 2** and "gain" in 0 of 2'
    ) in text
    # quick results, and results of the former schema, are not reported
    (results / "tune_digits.json").write_text(json.dumps(_tune_json(quick=True)))
    (results / "tune_calibration.json").unlink()
    assert report.main(["--results", str(results), "--readme", str(readme)]) == 0
    assert "Tuning with" not in readme.read_text()


def test_tuned_parts_give_every_loss_the_same_search(parts: ModuleType) -> None:
    from chanloss.config import load_config
    from chanloss.config.search import resolve_space

    part = parts.PARTS["tuned-finegrained"]
    assert part.kind == "tuned" and part.column == "finegrained, every loss tuned"
    items = parts.tuned_search_configs(part)
    assert [i["label"] for i in items] == list(parts.SETTINGS["losses"])  # the baselines included
    for item in items:
        raw = item["raw"]
        assert raw["data"]["val_fraction"] == parts.VAL_FRACTION  # chosen on validation
        dims, _ = resolve_space(load_config(raw={**raw, "seed": 0}))
        names = [d.name for d in dims]
        assert "optim.lr" in names, item["label"]  # CE gets a search too
        if item["label"] not in ("ce",):
            assert len(names) >= 2, item["label"]  # plus the loss's own space
    best = {"mc": {"losses": [{"name": "ce"}, {"name": "mc", "alpha": 0.2}], "optim": {"lr": 0.03}}}
    study = parts.tuned_study_config(part, "mc", best["mc"])
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


def test_rescore_recomputes_the_verdicts_from_the_stored_fold_scores(tmp_path: Path) -> None:
    from scipy import stats

    tool = load_script("chanloss_tune_results_rescore", TOOLS / "tune_results.py")
    results = tmp_path / "results"
    results.mkdir()
    data = _tune_json()
    # every fold favours the tuned arm by about 1.7 points: beyond noise (paired t-test)
    tuned, ce = [0.86, 0.84, 0.88, 0.85, 0.87], [0.84, 0.83, 0.85, 0.845, 0.85]
    data["losses"]["cc"]["cv"].update(tuned=tuned, ce=ce)
    data["losses"]["cc"]["noise"] = {"std": None, "dof": 0}  # no floor: the plain paired test
    data["losses"]["mc"].pop("test")  # no test check: no agreement to recompute
    data["losses"]["mc"]["cv"].update(tuned=ce, ce=ce)
    (results / "tune_digits.json").write_text(json.dumps(data))
    assert tool.main(["--rescore", "--datasets", "digits", "--results", str(results)]) == 0
    got = json.loads((results / "tune_digits.json").read_text())
    cc = got["losses"]["cc"]
    assert cc["cv"]["p"] == pytest.approx(stats.ttest_rel(tuned, ce).pvalue)
    assert cc["cv"]["beyond"] is True and cc["cv"]["beyond_corrected"] is False
    assert cc["verdict"].startswith("gain: the tuned setting beats CE alone")
    assert cc["answer"] == "gain"
    assert cc["agrees"] is True  # was False: the test check shows a gain too
    mc = got["losses"]["mc"]
    # with the entry's seed noise (1.23 points) the threshold is floored by it, and a gain
    # under the 2.9 points detectable would be missed: more than the useful 2.46
    assert mc["cv"]["diff"] == 0 and mc["verdict"].startswith("cannot tell: within noise, but a")
    assert mc["answer"] == "cannot tell"
    assert mc["cv"]["noise"] == 0.0123 and mc["cv"]["threshold"] == pytest.approx(
        stats.t.ppf(0.975, 4) * (2 / 5) ** 0.5 * 0.0123
    )
    assert mc["cv"]["floor"] == "seed noise"
    assert mc["agrees"] == data["losses"]["mc"]["agrees"]
    assert got["rescored"]["command"].startswith("python tools/tune_results.py --rescore")
    assert got["wall_s"] == data["wall_s"]  # the run's own figures are kept
    # the calibration file: every row's verdict, and the rates
    rows = [{"kind": "null", "repeat": 0, "tuned": tuned, "ce": ce, "wall_s": 60.0, "verdict": "?"},
            {"kind": "null", "repeat": 1, "tuned": ce, "ce": ce, "wall_s": 60.0, "verdict": "?"},
            {"kind": "positive", "repeat": 0, "tuned": tuned, "ce": ce, "wall_s": 90.0,
             "verdict": "?"}]  # fmt: skip
    (results / "tune_calibration.json").write_text(
        json.dumps({"folds": 5, "rows": rows, "wall_s": 210.0, "machine": MACHINE})
    )
    assert tool.main(["--rescore", "--calibration", "--results", str(results)]) == 0
    cal = json.loads((results / "tune_calibration.json").read_text())
    assert [r["verdict"] for r in cal["rows"]] == ["better", "no difference", "better"]
    assert cal["null_no_difference_rate"] == 0.5 and cal["positive_better_rate"] == 1.0
    assert cal["rows"][0]["p_corrected"] > 0.05 and cal["wall_s"] == 210.0
    for wrong in (["--datasets", "digits"], ["--reconfirm", "--calibration"]):
        with pytest.raises(SystemExit):  # one of --rescore / --reconfirm; --calibration rescores
            tool.main([*wrong, "--results", str(results)])


def test_results_of_losses_tuned_side_by_side_are_merged_into_one_file(tmp_path: Path) -> None:
    bench = load_script("chanloss_bench_tune_merge", BENCH / "bench_tune.py")
    path = tmp_path / "tune_folder.json"
    raw = bench.folder_raw(tmp_path / "folder", None)
    assert raw["data"] == {"name": "image_folder", "val_fraction": 0.1,
                           "root": str((tmp_path / "folder").resolve())}  # fmt: skip
    assert raw["epochs"] == 15 and bench.folder_raw(tmp_path, 3)["epochs"] == 3
    first = {"recipe": raw, "quick": False, "losses": {"mc": {"verdict": "a"}},
             "command": "mc run", "wall_s": 10.0, "machine": MACHINE}  # fmt: skip
    path.write_text(json.dumps(first))
    second = {**first, "losses": {"cc": {"verdict": "b"}}, "command": "cc run", "wall_s": 20.0}
    got = bench.merged(path, second)
    assert got["losses"]["cc"] == {"verdict": "b"} and got["command"] == "cc run"
    assert got["losses"]["mc"]["run"] == {"command": "mc run", "wall_s": 10.0, "machine": MACHINE}
    # a loss tuned again replaces the old entry; another recipe is not merged
    assert bench.merged(path, {**first, "losses": {"mc": {"verdict": "c"}}})["losses"] == {
        "mc": {"verdict": "c"}
    }
    other = {**second, "losses": {"cc": {}}, "recipe": {**raw, "epochs": 3}}
    assert set(bench.merged(path, other)["losses"]) == {"cc"}


def test_a_reconfirmation_keeps_the_searchs_record(tmp_path: Path) -> None:
    tool = load_script("chanloss_tune_results_reconfirm", TOOLS / "tune_results.py")
    path = tmp_path / "tune_folder.json"
    old = {"recipe": {"epochs": 15}, "quick": False, "timeout": "60m", "trials_per_search": None,
           "command": "search run", "wall_s": 3600.0, "machine": MACHINE,
           "losses": {"cc": {"verdict": "old", "search_and_confirm_wall_s": 3500.0,
                             "cv": {"diff": 0.049}, "agrees": False,
                             "run": {"command": "cc search"}}}}  # fmt: skip
    path.write_text(json.dumps(old))
    new = {**old, "timeout": None, "trials_per_search": 27, "command": "reconfirm run",
           "wall_s": 900.0, "machine": {**MACHINE, "load": 1},
           "losses": {"cc": {"verdict": "new", "cv": {"diff": 0.03},
                             "search_and_confirm_wall_s": 880.0}}}  # fmt: skip
    got = tool.reconfirmed(path, new)
    assert got["timeout"] == "60m" and got["trials_per_search"] is None
    assert got["command"] == "search run" and got["wall_s"] == 3600.0 and got["machine"] == MACHINE
    cc = got["losses"]["cc"]
    assert cc["verdict"] == "new" and cc["search_and_confirm_wall_s"] == 3500.0
    assert cc["run"] == {"command": "cc search"}
    assert cc["reconfirmed"]["command"] == "reconfirm run" and cc["reconfirmed"]["wall_s"] == 880.0
    assert cc["reconfirmed"]["earlier"] == [
        {"git": MACHINE["git"], "cv": {"diff": 0.049}, "verdict": "old", "agrees": False}
    ]
    # a second reconfirmation keeps both earlier answers, oldest first
    path.write_text(json.dumps(got))
    again = tool.reconfirmed(
        path,
        {**new, "losses": {"cc": {"verdict": "newer", "cv": {}, "search_and_confirm_wall_s": 1.0}}},
    )
    assert [e["verdict"] for e in again["losses"]["cc"]["reconfirmed"]["earlier"]] == ["old", "new"]
    with pytest.raises(SystemExit, match="--reconfirm: no study"):
        tool.finished_trials(tmp_path)


def test_agreement_follows_the_tune_issues_rule() -> None:
    bench = load_script("chanloss_bench_tune_agrees", BENCH / "bench_tune.py")

    def entry(answer: str | None, test_diff: float, test_beyond: bool) -> dict:
        cv = {"beyond": answer == "gain", "diff": 0.03 if answer == "gain" else 0.0}
        return {"answer": answer, "cv": cv, "test": {"diff": test_diff, "beyond": test_beyond}}

    # a gain on test: "gain", "cannot tell" or "unstable" hold; "no difference" and "worse" fail
    for answer, holds in (("gain", True), ("cannot tell", True), ("unstable", True),
                          ("no difference", False), ("worse", False)):  # fmt: skip
        assert bench.agrees(entry(answer, 0.02, True)) is holds, answer
    # no gain on test (none, or a loss): anything but "gain"
    for test_diff, beyond in ((0.001, False), (-0.03, True)):
        assert bench.agrees(entry("gain", test_diff, beyond)) is False
        for answer in ("cannot tell", "unstable", "no difference", "worse"):
            assert bench.agrees(entry(answer, test_diff, beyond)) is True
    # a file of the former schema: the verdict from the cross-validated gain
    assert bench.agrees(entry(None, 0.02, True)) is False


def test_a_reconfirmation_searches_no_further_than_the_stored_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chanloss.tuning

    tool = load_script("chanloss_tune_results_hook", TOOLS / "tune_results.py")
    asked: dict = {}

    def fake_tune(config, out, **kwargs):  # records the budget, trains nothing
        asked.update(kwargs, out=out)
        raise KeyboardInterrupt

    monkeypatch.setattr(chanloss.tuning, "tune", fake_tune)
    monkeypatch.setattr(tool, "finished_trials", lambda out: 27)
    args = tool.build_parser().parse_args(
        ["--reconfirm", "--datasets", "digits", "--timeout", "60m", "--runs", str(tmp_path)]
    )
    args.finished_trials = tool.finished_trials
    with pytest.raises(KeyboardInterrupt):
        tool.bench.run_dataset("digits", args, tmp_path)
    assert (asked["trials"], asked["timeout_s"]) == (27, None)
    assert asked["out"] == tmp_path / "digits" / "tune-mc"
    asked.clear()
    args.finished_trials = None  # the benchmark itself: the budget it was given
    with pytest.raises(KeyboardInterrupt):
        tool.bench.run_dataset("digits", args, tmp_path)
    assert (asked["trials"], asked["timeout_s"]) == (None, 3600.0)
