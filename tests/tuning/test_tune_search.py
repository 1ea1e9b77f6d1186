"""``chanloss tune``, a tiny tune end to end: the search on validation only, resume, pruning,
best.yaml; a search that learns nothing; a warning of every trial printed once."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml
from tiny_config import TUNE_TINY

from chanloss.cli import main
from chanloss.config import load_config
from chanloss.tuning import tune

# Digits, the narrowest ConvNet, 3 epochs: about a second per trial on one thread.
TINY = TUNE_TINY


# -- a tiny tune, end to end ---------------------------------------------------------------------
class _TestSplitGuard:
    """Stands in for the test split and records every access, with the phase of the tune."""

    phase = "search"
    reads: list[str] = []

    def __init__(self, dataset: object) -> None:
        self._dataset = dataset

    def __getattr__(self, name: str) -> object:
        _TestSplitGuard.reads.append(_TestSplitGuard.phase)
        return getattr(self._dataset, name)

    def __len__(self) -> int:
        _TestSplitGuard.reads.append(_TestSplitGuard.phase)
        return len(self._dataset)  # type: ignore[arg-type]


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> type[_TestSplitGuard]:
    import chanloss.run.build as trainer_module  # where the run is built
    import chanloss.tuning.trials as trials_module

    build = trainer_module.build_data
    read_test = trials_module.final_test_accuracy

    def build_data(config):  # noqa: ANN001, ANN202
        bundle = build(config)
        bundle.test = _TestSplitGuard(bundle.test)
        return bundle

    def final_test_accuracy(run_dir):  # noqa: ANN001, ANN202
        before, _TestSplitGuard.phase = _TestSplitGuard.phase, "final"
        try:
            return read_test(run_dir)
        finally:
            _TestSplitGuard.phase = before

    _TestSplitGuard.phase, _TestSplitGuard.reads = "search", []
    monkeypatch.setattr(trainer_module, "build_data", build_data)
    monkeypatch.setattr(trials_module, "final_test_accuracy", final_test_accuracy)
    return _TestSplitGuard


def test_tune_searches_on_validation_prunes_resumes_and_writes_a_trainable_best(
    tmp_path: Path, guarded: type[_TestSplitGuard]
) -> None:
    out = tmp_path / "tune"
    lines: list[str] = []
    config = load_config(raw=TINY)
    summary = tune(config, out, trials=6, folds=2, top=2, log=lines.append, config_path="tiny")

    # the search, the re-runs and the folds never read the test split; the two final runs did
    assert guarded.reads and set(guarded.reads) == {"final"}
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == list(range(6))
    assert [r["origin"] for r in rows[:3]] == ["config", "config, noise seed", "losses off"]
    assert [int(r["seed"]) for r in rows[:3]] == [0, 1, 0]
    states = [r["state"] for r in rows]
    assert "complete" in states
    for r in rows:  # every trial trained, on validation only
        metrics = list(csv.DictReader((Path(r["run_dir"]) / "metrics.csv").open()))
        assert all(m["val_acc"] != "" and m["test_acc"] == "" for m in metrics)
        if r["state"] == "complete":  # the score: the mean of the last 3 epochs
            vals = [float(m["val_acc"]) for m in metrics][-3:]
            assert float(r["val_acc"]) == pytest.approx(sum(vals) / len(vals), abs=1e-6)
    # the noise: the config as written on seeds 0 and 1, and on a third seed when those two
    # lie a stuck run's gap (5 points) apart; stuck runs left out
    a, b = (float(rows[i]["val_acc"]) for i in (0, 1))
    twins = [r for r in rows if r["origin"].startswith("config") and r["state"] == "complete"]
    if abs(a - b) >= 0.05:
        assert [(r["origin"], r["seed"]) for r in twins][2] == ("config, third seed", "100")
    kept = [float(r["val_acc"]) for r in twins if r["stuck"] != "yes"]
    noise = summary["noise"]
    assert noise["dof"] >= 1 and noise["std"] > 0
    # the seed twins alone: the re-runs of selected trials are not pooled into it
    assert noise["dof"] == len(kept) - 1
    assert noise["std"] == pytest.approx(statistics.stdev(kept), abs=1e-6)
    assert noise["stuck_left_out"] == [int(r["number"]) for r in twins if r["stuck"] == "yes"]
    assert (
        f"{100 * noise['std']:.2f} points"
        in [line for line in lines if line.startswith("noise: on this split")][-1]
    )
    # one line per finished trial, a progress line after each, the final table
    assert sum(line.startswith("trial ") for line in lines) == 6
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == 6
    assert all("ETA" in line and "(search and the runs after it)" in line for line in progress)
    runs_after = [line for line in lines if line.startswith("  ") and " seed " in line]
    assert len(runs_after) >= 2 + 4 + 2 and all("ETA" in line for line in runs_after)
    table = next(line for line in lines if "gain over CE" in line)
    assert "validation (2 folds, paired)" in table and "test (full training split, once)" in table
    # two folds give no verdict alone: "cannot tell", and CE alone is what the command names
    assert "(2 folds: at least 3 are needed for a verdict: information, not a verdict)" in table
    assert "verdict: cannot tell: 2 folds" in table
    assert summary["verdict"]["answer"] == "cannot tell" and summary["verdict"]["use"] == "ce.yaml"
    assert lines[-1].strip() == (
        f"report in {out / 'report.html'}; verdict cannot tell: best.yaml is not shown to help; "
        f"train CE alone with: chanloss train -c {out / 'ce.yaml'}"
    )
    assert (
        "# NOT shown to help: the confirmation's verdict is 'cannot tell'"
        in (out / "best.yaml").read_text()
    )
    ce_raw = yaml.safe_load((out / "ce.yaml").read_text())
    assert ce_raw["losses"] == [{"name": "ce"}] and "search" not in ce_raw
    assert ce_raw["optim"]["lr"] == TINY["optim"]["lr"]

    # the 2 best settings re-run on seed 2; the winner is the better re-run
    reruns = summary["reruns"]
    assert len(reruns) == 2
    best = summary["best"]
    assert best["rerun_val_acc"] == max(r["rerun_score"] for r in reruns)
    assert best["trial"] in [r["trial"] for r in reruns]
    conf = summary["confirmation"]
    assert conf["mode"] == "folds" and conf["folds"] == 2
    assert len(conf["val"]["ce"]) == 2 and len(conf["test"]["ce"]) == 1
    assert conf["val"]["gain"]["diffs"] == pytest.approx(
        [t - c for t, c in zip(conf["val"]["tuned"], conf["val"]["ce"], strict=True)]
    )
    assert all(0.0 <= acc <= 1.0 for acc in conf["test"]["tuned"] + conf["val"]["ce"])
    # the folds validate on every training image once, stratified
    fold_runs = sorted((out / "confirm" / "ce").glob("fold*"))
    assert [p.name for p in fold_runs] == ["fold0", "fold1"]
    # a fold trains on half of the images for twice the epochs: the whole split's steps
    split_seeds = set()
    for k, run in enumerate(fold_runs):
        ce_fold = yaml.safe_load((run / "config.yaml").read_text())
        assert ce_fold["epochs"] == 2 * TINY["epochs"]
        # fold k: both arms on seed confirm_seed + k, the folds drawn with one split seed
        tuned = yaml.safe_load(
            (out / "confirm" / f"trial-{best['trial']:04d}" / run.name / "config.yaml").read_text()
        )
        assert ce_fold["seed"] == tuned["seed"] == conf["seed"] + k
        split_seeds |= {ce_fold["data"]["split_seed"], tuned["data"]["split_seed"]}
    assert len(split_seeds) == 1
    final = yaml.safe_load((out / "final" / "ce" / "config.yaml").read_text())
    assert final["epochs"] == TINY["epochs"]
    report = (out / "report.html").read_text()
    for png in ("history.png", "params.png", "curves.png"):
        assert f"src='{png}'" in report and (out / png).stat().st_size > 1000
    assert "Confirmation against CE alone" in report and "re-run score" in report
    # the report leads with the verdict and the config to use; "chosen" comes after
    assert report.index("Verdict: cannot tell") < report.index("Use <a href='ce.yaml'>")
    assert report.index("Use <a href='ce.yaml'>") < report.index("Chosen: trial")
    assert "noise: on this split" in report
    stored = json.loads((out / "tune.json").read_text())
    assert stored["noise"]["std"] == pytest.approx(noise["std"])
    # the verdict, the stuck runs (search and folds) and the search's time are kept
    assert stored["verdict"] == summary["verdict"] and set(stored["stuck"]) == {
        "search",
        "confirmation",
    }
    assert [r["trial"] for r in stored["stuck"]["search"]] == noise["stuck_left_out"]
    assert stored["search_s"] > 0
    # the pruner's noise by epoch: the seed pair's smoothed curves, kept, printed, reported
    by_epoch = stored["noise"]["by_epoch"]
    assert sorted(map(int, by_epoch)) == list(range(1, 4))
    assert by_epoch["3"] == pytest.approx(noise["std"], abs=1e-6)  # the final scores'
    assert by_epoch["1"] >= by_epoch["2"] >= by_epoch["3"]
    assert any(line.startswith("noise by epoch") for line in lines)
    assert "noise by epoch" in report
    assert "last 3 evaluated epochs" in stored["score"]

    # best.yaml is a plain config with the chosen values that `chanloss train` runs
    raw = yaml.safe_load((out / "best.yaml").read_text())
    assert "search" not in raw
    assert raw["losses"][1]["alpha"] == pytest.approx(best["params"]["mc.alpha"])
    assert raw["optim"]["lr"] == pytest.approx(best["params"]["optim.lr"])
    assert main(["train", "-c", str(out / "best.yaml"), "--set", "epochs=1", "--out",
                 str(tmp_path / "best-run"), "-q"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "best-run" / "summary.json").read_text())["finished"]
    assert main(["train", "-c", str(out / "ce.yaml"), "--set", "epochs=1", "--out",
                 str(tmp_path / "ce-run"), "-q"]) == 0  # fmt: skip

    # --resume: the 6 finished trials are kept, 2 more run, finished runs are reused
    guarded.phase, guarded.reads = "search", []
    lines.clear()
    summary = tune(config, out, trials=8, folds=2, top=2, resume=True, log=lines.append)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == list(range(8))
    assert [line.split(":")[0] for line in lines if line.startswith("trial ")] == [
        "trial   6",
        "trial   7",
    ]
    assert "search" not in guarded.reads
    if summary["best"]["trial"] == best["trial"]:  # the same winner: its final runs reused
        assert guarded.reads == []


def test_a_search_that_learns_nothing_says_so_and_chooses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "tune"
    lines: list[str] = []
    raw = {**TINY, "epochs": 2, "search": {**TINY["search"], "optim": {"lr": [1e-7, 1e-6]}}}
    summary = tune(load_config(raw=raw), out, trials=3, timeout_s=3600, log=lines.append)
    assert summary["learned"] is False and summary["best"] is None
    assert summary["confirmation"] is None and summary["chance"] == pytest.approx(0.1)
    assert any(line.startswith("no trial learned more than chance") for line in lines)
    assert not (out / "best.yaml").exists() and not (out / "importances.png").exists()
    report = (out / "report.html").read_text()
    assert "no trial learned more than chance" in report and "No setting is chosen" in report
    # --trials stopped the search with (nearly all of) the hour left: said once, and kept
    note = next(line for line in lines if line.startswith("budget: the search stopped"))
    assert "--trials 3" in note and "leave --trials out" in note
    assert summary["notes"] == [note, next(ln for ln in lines if ln.startswith("no trial"))]


def test_a_warning_repeated_by_every_trial_in_worker_processes_is_printed_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from chanloss.core.messages import command_scope

    # CC-Loss's side branch on 20 feature channels with reduction 16: 20 // 16 = 1 < 4 warns
    raw = {**TINY, "losses": [{"name": "ce"}, {"name": "cc", "placement": "branch"}],
           "search": {"cc": {"placement": None, "form": None}}, "epochs": 1}  # fmt: skip
    with command_scope():  # what the command line wraps around a command
        tune(load_config(raw=raw), tmp_path / "tune", trials=4, jobs=2, folds=0, top=0,
             pruner="none", log=lambda line: None)  # fmt: skip
    out, err = capfd.readouterr()
    warned = [line for line in (out + err).splitlines() if "min_hidden" in line]
    assert len(warned) == 1, out + err
    assert warned[0].startswith("chanloss: warning: ") and "return cls(" not in out + err
