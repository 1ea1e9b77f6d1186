"""``chanloss tune``: search spaces, the search on validation only, resume, pruning, best.yaml,
a storage shared by two processes, and every user error (one line, exit status 2)."""

from __future__ import annotations

import copy
import csv
import json
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_config import TUNE_TINY

from chanloss.cli import main
from chanloss.config import ConfigError, load_config
from chanloss.config.reference import builtin_losses
from chanloss.config.search import apply_params, low_end_params, resolve_space, start_params
from chanloss.losses import LOSSES
from chanloss.losses.search import Choice, IntRange, LogUniform, Uniform
from chanloss.tuning import advice, gain_over, parse_duration, tune

ROOT = Path(__file__).resolve().parents[2]

# Digits, the narrowest ConvNet, 3 epochs: about a second per trial on one thread.
TINY = TUNE_TINY


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def user_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("chanloss: error: "), err
    return lines[0]


# -- search spaces -------------------------------------------------------------------------------
def test_every_weight_range_can_switch_its_loss_almost_off() -> None:
    for name, cls in builtin_losses().items():
        for key, param in getattr(cls, "search_space", {}).items():
            assert isinstance(param, (LogUniform, Uniform, IntRange, Choice)), (name, key)
            if isinstance(param, Choice):
                assert param.values, (name, key)
            else:
                assert param.low < param.high, (name, key)
            if key == "weight" or key in ("alpha", "beta") and name == "mc":
                assert isinstance(param, LogUniform) and param.low <= 0.01, (name, key)
    assert {"form", "placement", "weight"} <= set(LOSSES["cc"].search_space)
    assert isinstance(LOSSES["mc"].search_space["keep_ratio"], Choice)
    assert isinstance(LOSSES["mc"].search_space["pool"], Choice)


def test_search_block_narrows_overrides_and_adds_optimiser_keys() -> None:
    raw = {
        **TINY,
        "search": {
            "mc": {"alpha": [0.01, 1], "keep_ratio": [0.5, 1.0], "pool": None, "beta": 5.0},
            "optim": {"lr": [0.01, 0.2], "momentum": {"low": 0.5, "high": 0.95}},
        },
    }
    config = load_config(raw=raw)
    dims, fixed = resolve_space(config)
    got = {d.name: d.param for d in dims}
    assert got == {
        "mc.alpha": LogUniform(0.01, 1.0),  # a default log range stays log
        "mc.keep_ratio": Choice((0.5, 1.0)),  # a default choice stays a choice
        "optim.lr": LogUniform(0.01, 0.2),
        "optim.momentum": Uniform(0.5, 0.95),
    }
    assert fixed == {("losses", 1, "beta"): 5.0}
    params = {"mc.alpha": 0.1, "mc.keep_ratio": 0.5, "optim.lr": 0.02, "optim.momentum": 0.8}
    out = apply_params(config.model_dump(mode="json"), dims, fixed, params)
    assert "search" not in out
    assert (out["losses"][1]["alpha"], out["losses"][1]["beta"]) == (0.1, 5.0)
    assert out["losses"][1]["keep_ratio"] == 0.5 and out["optim"]["lr"] == 0.02
    load_config(raw=out)  # a plain, valid training config
    # the first trials: the config as given, then the losses at the low ends of their ranges
    # (MC's alpha 1.5 and keep_ratio 2/3 lie outside the narrowed ranges: sampled instead)
    assert start_params(config, dims) == {"optim.lr": 0.1, "optim.momentum": 0.9}
    assert low_end_params(config, dims)["mc.alpha"] == 0.01


@pytest.mark.parametrize(
    ("search", "message"),
    [
        (
            {"mc": {"alfa": [1, 2]}},
            "mc.alfa: loss 'mc' has no parameter 'alfa' (did you mean 'alpha'?)",
        ),
        ({"cc": {"weight": [0.1, 1]}}, "cc: the config has no loss 'cc'"),
        ({"mc": {"alpha": [2.0, 1.0]}}, "mc.alpha: empty range [2.0, 1.0]"),
        ({"mc": {"alpha": [1.0, 1.0]}}, "mc.alpha: empty range"),
        ({"mc": {"pool": []}}, "mc.pool: empty choices"),
        ({"mc": {"alpha": [0.0, 1.0]}}, "a log-uniform range needs low > 0"),
        ({"mc": {"alpha": {"low": 1, "hi": 2}}}, "unknown key 'hi' (did you mean 'high'?)"),
        ({"optim": {"nesterov": [0, 1]}}, "optim.nesterov cannot be tuned"),
        ({"mc": [1, 2]}, "search.mc: Input should be a valid dictionary"),
    ],
)
def test_bad_search_blocks_are_config_errors(search: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="search") as err:
        load_config(raw={**TINY, "search": search})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_durations_and_the_two_standard_error_rule() -> None:
    assert parse_duration("2h") == 7200 and parse_duration("1h30m") == 5400
    assert parse_duration("90m") == 5400 and parse_duration("45") == 45
    for bad in ("", "2x", "0", "h"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    # means 0.9 vs 0.8, stds 0.01: SE = sqrt(2 * 1e-4 / 3) = 0.00816, far beyond 2 SE
    g = gain_over([0.89, 0.90, 0.91], [0.79, 0.80, 0.81])
    assert g["diff"] == pytest.approx(0.1) and g["se"] == pytest.approx((2e-4 / 3) ** 0.5)
    assert g["beyond"] is True
    assert gain_over([0.80, 0.90], [0.84, 0.85])["beyond"] is False
    assert gain_over([0.9], [0.8])["beyond"] is None  # one seed: no noise estimate

    # the advice follows the validation runs only
    def conf(val_gain: dict) -> dict:
        return {"val": {"gain": val_gain}, "test": {"gain": {"diff": -1.0, "beyond": True}}}

    assert "use best.yaml" in advice(conf(g))
    assert "keep CE" in advice(conf(gain_over([0.79, 0.80, 0.81], [0.89, 0.90, 0.91])))
    # within noise: "as good" only where a useful gain would have been seen
    blind = advice(conf(gain_over([0.80, 0.90], [0.84, 0.85])))
    assert blind.startswith("cannot tell: within noise, but a gain smaller than 14.3 points")
    sharp = advice(conf(gain_over([0.800, 0.801, 0.802], [0.799, 0.800, 0.801])))
    assert "CE alone is as good" in sharp
    assert advice(conf(gain_over([0.9], [0.8]))).startswith("cannot tell: one run each")


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


def _tune_in_child(raw: dict, out: str, storage: str, log: str) -> None:
    import traceback

    with open(log, "w") as f:
        try:
            tune(load_config(raw=raw), out, trials=4, folds=0, top=0, storage=storage,
                 pruner="none", log=lambda line: print(line, file=f, flush=True))  # fmt: skip
        except BaseException:
            traceback.print_exc(file=f)  # into the log the assertion shows
            raise


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_processes_share_one_storage(tmp_path: Path, kind: str) -> None:
    import multiprocessing

    import optuna

    from chanloss.tuning import STUDY_NAME, open_storage

    storage = (
        f"journal:{tmp_path / 'study.journal'}"
        if kind == "journal"
        else f"sqlite:///{tmp_path / 'study.db'}"
    )
    raw = {**TINY, "epochs": 2}
    # forked, so that the two start at once without importing torch, scikit-learn (digits),
    # torch._dynamo (optimisers) and matplotlib (the report) again
    import torch._dynamo  # noqa: F401

    import chanloss.tuning.report  # noqa: F401
    from chanloss.data import build_datasets

    build_datasets("digits", val_fraction=0.25)
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(
            target=_tune_in_child,
            args=(raw, str(tmp_path / name), storage, str(tmp_path / f"{name}.log")),
        )
        for name in ("a", "b")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    logs = [(tmp_path / f"{name}.log").read_text() for name in ("a", "b")]
    assert [p.exitcode for p in procs] == [0, 0], logs
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(storage))
    numbers = [t.number for t in study.trials if t.state.is_finished()]
    assert len(numbers) == len(set(numbers))
    # each process starts a trial only while fewer than 4 are finished or running; the two
    # may both start one in the same instant, so at most one more than asked
    assert 4 <= len(numbers) <= 5
    ran = [sum(line.startswith("trial ") for line in log.splitlines()) for log in logs]
    assert sum(ran) == len(numbers)
    # each wrote the best of the shared study at its end (the later one: the final best)
    lrs = [
        yaml.safe_load((tmp_path / name / "best.yaml").read_text())["optim"]["lr"]
        for name in ("a", "b")
    ]
    complete = [t.params["optim.lr"] for t in study.trials if t.state.name == "COMPLETE"]
    assert all(any(lr == pytest.approx(c) for c in complete) for lr in lrs)


def _pop_queue(spec: str, out: Any) -> None:
    import optuna

    from chanloss.tuning import STUDY_NAME, open_storage

    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(spec))
    claimed = []
    while "k" in (trial := study.ask()).user_attrs:
        claimed.append(trial.user_attrs["k"])
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    out.put(claimed)


def test_two_workers_popping_one_sqlite_queue_never_get_the_same_trial(tmp_path: Path) -> None:
    # Without BEGIN IMMEDIATE, Optuna's read-then-update of a waiting trial raced in SQLite:
    # 6 to 14 of these 60 trials were handed to both workers
    import multiprocessing

    import optuna

    from chanloss.tuning import STUDY_NAME, open_storage

    spec = f"sqlite:///{tmp_path / 'queue.db'}"
    study = optuna.create_study(study_name=STUDY_NAME, storage=open_storage(spec))
    for k in range(60):
        study.enqueue_trial({}, user_attrs={"k": k})
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_pop_queue, args=(spec, out)) for _ in range(2)]
    for p in procs:
        p.start()
    claimed = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    both = claimed[0] + claimed[1]
    assert sorted(both) == list(range(60)), claimed


def test_a_trial_cut_short_by_a_killed_process_is_queued_again_on_resume(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    import optuna

    from chanloss.tuning import STUDY_NAME, open_storage

    out = tmp_path / "tune"
    config = load_config(raw={**TINY, "epochs": 1})
    tune(config, out, trials=2, folds=0, top=0, pruner="none", log=lambda line: None)
    storage = open_storage(f"sqlite:///{out / 'study.db'}")
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    # a trial as a process killed mid-trial leaves it: RUNNING, owned by a pid that is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    cut = study.ask(fixed_distributions=study.trials[0].distributions)
    cut.set_user_attr("host", socket.gethostname())
    cut.set_user_attr("pid", int(dead.stdout))
    lines: list[str] = []
    # (4 trials: a third seed of the config may have been queued before the cut one)
    tune(config, out, trials=4, folds=0, top=0, pruner="none", resume=True, log=lines.append)
    assert f"trial {cut.number} was cut short by an earlier run; queued again" in lines
    trials = optuna.load_study(study_name=STUDY_NAME, storage=storage).trials
    assert trials[cut.number].state.name == "FAIL"
    origin = f"rerun of trial {cut.number}"
    (rerun,) = [t for t in trials if t.user_attrs.get("origin") == origin]
    assert rerun.state.name == "COMPLETE" and rerun.params == trials[cut.number].params
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert rows[rerun.number]["origin"] == origin


def test_the_halving_pruner_stops_trials_early() -> None:
    import optuna

    from chanloss.tuning.pruners import make_pruner

    pruner = make_pruner("halving", epochs=9)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    stopped = []
    for accuracy in (0.9, 0.8, 0.7, 0.2, 0.1):  # later trials worse at every epoch
        trial = study.ask()
        for epoch in range(9):
            trial.report(accuracy, epoch)
            if trial.should_prune():
                stopped.append(epoch)
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, accuracy)
    assert stopped and max(stopped) < 8  # the bad trials stopped before their last epoch
    with pytest.raises(ConfigError, match="--pruner: expected one of noise, median, halving"):
        make_pruner("hyperband", epochs=9)


# -- user errors ---------------------------------------------------------------------------------
def test_tune_user_errors_are_one_line_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path / "tiny.yaml", TINY)
    out = str(tmp_path / "out")
    base = ["tune", "-c", str(cfg), "--out", out]
    assert "--trials: must be an integer >= 1, got '0'" in user_error(
        capsys, [*base, "--trials", "0"]
    )
    assert "--jobs: must be an integer >= 1" in user_error(capsys, [*base, "--jobs", "0"])
    assert "--timeout: expected a duration" in user_error(capsys, [*base, "--timeout", "soon"])
    for bad in ("1", "0", "-2"):
        assert "--folds: must be an integer >= 2" in user_error(capsys, [*base, "--folds", bad])
    line = user_error(capsys, [*base, "--folds", "3", "--confirm-seeds", "2"])
    assert "--folds and --confirm-seeds are two confirmations; choose one" in line
    line = user_error(capsys, [*base, "--folds", "400"])  # digits: ~140 training images a class
    assert "--folds 400: every class needs at least 400 training images; class" in line
    line = user_error(capsys, [*base, "--set", "data.val_fraction=0"])
    assert "tune needs a validation split" in line and "data.val_fraction" in line
    line = user_error(capsys, [*base, "--set", "search.arcface.margin=[0.1,0.5]"])
    assert "the config has no loss 'arcface'" in line
    line = user_error(capsys, [*base, "--set", "search.mc.alfa=[0.1,1]"])
    assert "has no parameter 'alfa'" in line
    line = user_error(capsys, [*base, "--set", "search.mc.beta=[5,1]"])
    assert "empty range [5, 1]" in line
    line = user_error(capsys, [*base, "--set", "losses=[{name: ce}]", "--set", "search={}"])
    assert "nothing to tune" in line
    assert "expected a database URL" in user_error(capsys, [*base, "--storage", "nowhere"])
    assert "holds no study" in user_error(capsys, [*base, "--resume"])
    assert not Path(out).exists()  # refused starts leave nothing behind

    # a storage that holds a study of another config
    import optuna

    from chanloss.tuning import STUDY_NAME, Tuner, open_storage

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    tuner = Tuner(load_config(cfg), tmp_path / "first", 1, storage=storage)
    tuner.open_study()
    assert len(optuna.load_study(study_name=STUDY_NAME, storage=open_storage(storage)).trials) == 3
    line = user_error(capsys, [*base, "--storage", storage, "--set", "epochs=4"])
    assert "holds a study of a different config (differs in epochs)" in line
    line = user_error(capsys, [*base, "--storage", storage, "--set", "search.mc.pool=[max]"])
    assert "different config (differs in search space)" in line
    # a study written before the schema gained a key is still the same config
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(storage))
    old = copy.deepcopy(study.user_attrs["chanloss_identity"])
    del old["config"]["eval_every"]
    study.set_user_attr("chanloss_identity", old)
    study.set_user_attr("chanloss_fingerprint", "written-by-an-older-chanloss")
    Tuner(load_config(cfg), tmp_path / "upgraded", 1, storage=storage).open_study()
    # the same config joins it; a study in --out is continued only with --resume
    Tuner(load_config(cfg), tmp_path / "second", 1, storage=storage).open_study()
    (tmp_path / "third").mkdir()
    local = Tuner(load_config(cfg), tmp_path / "third", 1)
    local.open_study()
    line = user_error(capsys, ["tune", "-c", str(cfg), "--out", str(tmp_path / "third")])
    assert "already holds a study (study.db); add --resume" in line
    # one tune per OUT at a time: the directory's lock is held by the first
    from chanloss.run.run_dir import RunDir

    with RunDir(tmp_path / "busy"):
        line = user_error(capsys, ["tune", "-c", str(cfg), "--out", str(tmp_path / "busy")])
    assert "is in use by another chanloss run" in line


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
