"""``chanloss tune`` with a storage shared by two processes: both searches add to one study,
two workers never pop the same queued trial, and a trial cut short by a killed process is queued
again on resume."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_config import TUNE_TINY

from chanloss.config import load_config
from chanloss.tuning import tune

# Digits, the narrowest ConvNet, 3 epochs: about a second per trial on one thread.
TINY = TUNE_TINY


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
