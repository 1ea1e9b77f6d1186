"""``chanloss tune``: search spaces, the search on validation only, resume, pruning, best.yaml,
a storage shared by two processes, and every user error (one line, exit status 2)."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest
import yaml

from chanloss.cli import main
from chanloss.losses import LOSSES
from chanloss.losses.search import Choice, IntRange, LogUniform, Uniform
from chanloss.training import load_config
from chanloss.training.config import ConfigError
from chanloss.training.config_reference import builtin_losses
from chanloss.training.search import apply_params, low_end_params, resolve_space, start_params
from chanloss.tuning import advice, gain_over, parse_duration, tune

ROOT = Path(__file__).resolve().parents[1]

# Digits, the narrowest ConvNet, 2 epochs: about half a second per trial on one thread.
TINY = {
    "model": {"name": "convnet_small", "width": 4, "feature_channels": 20, "pools": 1},
    "data": {"name": "digits", "val_fraction": 0.25},
    "losses": [{"name": "ce"}, {"name": "mc"}],
    "optim": {"lr": 0.1},
    "schedule": {"name": "constant"},
    "epochs": 2,
    "batch_size": 128,
    "device": "cpu",
    # MC's weights and the learning rate; a wide lr range gives the pruner poor trials to stop
    "search": {"mc": {"keep_ratio": None, "pool": None}, "optim": {"lr": [1e-4, 0.5]}},
}


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
    assert {"form", "reduction", "weight"} <= set(LOSSES["cc"].search_space)
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
    assert "CE alone is as good" in advice(conf(gain_over([0.80, 0.90], [0.84, 0.85])))
    assert "no noise estimate" in advice(conf(gain_over([0.9], [0.8])))


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
    import chanloss.training.build as trainer_module  # where the run is built
    from chanloss.tuning import Tuner

    build = trainer_module.build_data
    built = {"n": 0}

    def build_data(config):  # noqa: ANN001, ANN202
        bundle = build(config)
        bundle.test = _TestSplitGuard(bundle.test)
        built["n"] += 1
        return bundle

    confirm = Tuner.confirm

    def confirm_after_search(self, best):  # noqa: ANN001, ANN202
        _TestSplitGuard.phase = "confirm"
        return confirm(self, best)

    _TestSplitGuard.phase, _TestSplitGuard.reads = "search", []
    monkeypatch.setattr(trainer_module, "build_data", build_data)
    monkeypatch.setattr(Tuner, "confirm", confirm_after_search)
    _TestSplitGuard.built = built  # type: ignore[attr-defined]
    return _TestSplitGuard


def test_tune_searches_on_validation_prunes_resumes_and_writes_a_trainable_best(
    tmp_path: Path, guarded: type[_TestSplitGuard]
) -> None:
    out = tmp_path / "tune"
    lines: list[str] = []
    config = load_config(raw=TINY)
    summary = tune(config, out, trials=6, confirm_seeds=2, log=lines.append, config_path="tiny")

    # the test split was read only after the search, by the confirmation runs
    assert "search" not in guarded.reads
    assert "confirm" in guarded.reads
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == list(range(6))
    assert rows[0]["origin"] == "config" and rows[1]["origin"] == "losses off"
    states = [r["state"] for r in rows]
    assert "pruned" in states and "complete" in states
    pruned = next(r for r in rows if r["state"] == "pruned")
    assert int(pruned["epochs"]) < TINY["epochs"] and pruned["val_acc"] == ""
    for r in rows:  # every trial trained, on validation only
        metrics = list(csv.DictReader((Path(r["run_dir"]) / "metrics.csv").open()))
        assert all(m["val_acc"] != "" and m["test_acc"] == "" for m in metrics)
    # one line per finished trial, a progress line after each, the final table
    assert sum(line.startswith("trial ") for line in lines) == 6
    assert sum("ETA" in line or line.startswith("[####################]") for line in lines) == 6
    table = next(line for line in lines if "gain over CE" in line)
    assert "validation (2 seeds)" in table and "test (read once)" in table
    assert ("beyond noise" in table) or ("within noise" in table)
    assert any(w in table for w in ("use best.yaml", "keep CE", "CE alone is as good"))

    best = summary["best"]
    assert best["val_acc"] == max(float(r["val_acc"]) for r in rows if r["val_acc"])
    conf = summary["confirmation"]
    assert conf["seeds"] == [1, 2] and len(conf["test"]["ce"]) == 2
    assert all(0.0 <= a <= 1.0 for a in conf["test"]["tuned"] + conf["val"]["ce"])
    report = (out / "report.html").read_text()
    for png in ("history.png", "params.png", "curves.png"):
        assert f"src='{png}'" in report and (out / png).stat().st_size > 1000
    assert "Confirmation against CE alone" in report

    # best.yaml is a plain config with the chosen values that `chanloss train` runs
    raw = yaml.safe_load((out / "best.yaml").read_text())
    assert "search" not in raw
    assert raw["losses"][1]["alpha"] == pytest.approx(best["params"]["mc.alpha"])
    assert raw["optim"]["lr"] == pytest.approx(best["params"]["optim.lr"])
    assert main(["train", "-c", str(out / "best.yaml"), "--set", "epochs=1", "--out",
                 str(tmp_path / "best-run"), "-q"]) == 0  # fmt: skip
    assert json.loads((tmp_path / "best-run" / "summary.json").read_text())["finished"]

    # --resume: the 6 finished trials are kept, 2 more run, the confirmation runs are reused
    guarded.phase, guarded.reads = "search", []
    built = guarded.built["n"]
    lines.clear()
    summary = tune(config, out, trials=8, confirm_seeds=2, resume=True, log=lines.append)
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == list(range(8))
    assert [line.split(":")[0] for line in lines if line.startswith("trial ")] == [
        "trial   6",
        "trial   7",
    ]
    assert "search" not in guarded.reads
    new_best = summary["best"]["trial"]
    # data built by the 2 new trials, plus (train + test read) x 2 seeds when the best changed
    assert guarded.built["n"] - built == 2 + (0 if new_best == best["trial"] else 2 * 2)


def _tune_in_child(raw: dict, out: str, storage: str, log: str) -> None:
    with open(log, "w") as f:
        tune(load_config(raw=raw), out, trials=4, confirm_seeds=0, storage=storage,
             pruner="none", log=lambda line: print(line, file=f, flush=True))  # fmt: skip


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
    raw = {**TINY, "epochs": 1}
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
    assert any(lr == pytest.approx(study.best_trial.params["optim.lr"]) for lr in lrs)


def test_a_trial_cut_short_by_a_killed_process_is_queued_again_on_resume(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    import optuna

    from chanloss.tuning import STUDY_NAME, open_storage

    out = tmp_path / "tune"
    config = load_config(raw={**TINY, "epochs": 1})
    tune(config, out, trials=2, confirm_seeds=0, pruner="none", log=lambda line: None)
    storage = open_storage(f"sqlite:///{out / 'study.db'}")
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    # a trial as a process killed mid-trial leaves it: RUNNING, owned by a pid that is gone
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    cut = study.ask(fixed_distributions=study.trials[0].distributions)
    cut.set_user_attr("host", socket.gethostname())
    cut.set_user_attr("pid", int(dead.stdout))
    lines: list[str] = []
    tune(config, out, trials=3, confirm_seeds=0, pruner="none", resume=True, log=lines.append)
    assert f"trial {cut.number} was cut short by an earlier run; queued again" in lines
    trials = optuna.load_study(study_name=STUDY_NAME, storage=storage).trials
    assert trials[cut.number].state.name == "FAIL"
    rerun = trials[-1]
    assert rerun.number == cut.number + 1 and rerun.state.name == "COMPLETE"
    assert rerun.params == trials[cut.number].params
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert rows[-1]["origin"] == f"rerun of trial {cut.number}"


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
    with pytest.raises(ConfigError, match="--pruner: expected one of median, halving, none"):
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
    assert len(optuna.load_study(study_name=STUDY_NAME, storage=open_storage(storage)).trials) == 2
    line = user_error(capsys, [*base, "--storage", storage, "--set", "epochs=3"])
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
    from chanloss.training.run_dir import RunDir

    with RunDir(tmp_path / "busy"):
        line = user_error(capsys, ["tune", "-c", str(cfg), "--out", str(tmp_path / "busy")])
    assert "is in use by another chanloss run" in line
