"""One trial or confirmation run, in this process or in worker processes.

A run's outcome is what the training call returns (its validation curve, epochs, the test
accuracy read once where asked); a plain dict appears only in a confirmation run's cache file
(``confirm.json``) and in the task a worker process receives.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chanloss.errors import TrainingDiverged
from chanloss.training.config import (
    ConfigError,
    config_to_dict,
    load_config,
    resolved_config_dict,
    yaml_load,
)
from chanloss.tuning.common import clock, cores, write_text
from chanloss.tuning.pruners import make_pruner
from chanloss.tuning.quiet import collected
from chanloss.tuning.stats import curve_score
from chanloss.tuning.storage import open_storage

__all__ = [
    "Inline",
    "RunOutcome",
    "TrialOutcome",
    "confirm_runs",
    "final_test_accuracy",
    "run_confirm",
    "run_trial",
]


@dataclass
class TrialOutcome:
    """A search trial: ``state`` complete | pruned | diverged | failed; ``score`` the mean of
    the last epochs' validation accuracy (:func:`~chanloss.tuning.stats.curve_score`, complete
    trials); ``curve`` the validation accuracy of every evaluated epoch; ``messages`` what the
    run printed or warned (printed once per command by the tuner)."""

    state: str
    score: float | None
    curve: list[float]
    epochs: int
    time_s: float
    error: str | None = None
    messages: list[str] = field(default_factory=list)
    num_classes: int | None = None


@dataclass
class RunOutcome:
    """A confirmation run: its seed, validation score and curve (``None``/empty without a
    validation split), the final model's test accuracy (read once, when asked) and time."""

    seed: int
    score: float | None
    curve: list[float]
    test_acc: float | None
    time_s: float
    messages: list[str] = field(default_factory=list)


def _diverged(err: BaseException) -> bool:
    """A trial whose training diverged (the typed error), as opposed to one that failed."""
    return isinstance(err, TrainingDiverged)


def _one_line(err: BaseException, with_type: bool = False) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if with_type else text


def run_trial(trial: Any, raw: dict[str, Any], run_dir: Path) -> TrialOutcome:
    """Train one trial's config into ``run_dir`` (test split never read), reporting the
    validation accuracy of every evaluated epoch to ``trial`` and stopping when it is pruned."""
    import optuna

    from chanloss.training.trainer import train

    start = time.perf_counter()
    curve: list[float] = []
    done = {"epochs": 0}

    def on_epoch_end(epoch: int, row: dict[str, Any]) -> None:
        done["epochs"] = epoch
        if row.get("val_acc") is None:
            return
        curve.append(float(row["val_acc"]))
        trial.report(curve[-1], epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    state, error, messages, classes = "complete", None, [], None
    try:
        with collected(messages):
            config = load_config(raw=raw)
            summary = train(config, run_dir, verbose=0, evaluate_test=False,
                            on_epoch_end=on_epoch_end)  # fmt: skip
        if not curve:
            raise ConfigError(f"trial run {run_dir} recorded no validation accuracy")
        done["epochs"], classes = summary["epochs"], summary["num_classes"]
    except optuna.TrialPruned:
        state = "pruned"
    except ConfigError as err:
        state, error = "diverged" if _diverged(err) else "failed", _one_line(err)
    except (RuntimeError, ValueError, TypeError, OSError) as err:
        state, error = "failed", _one_line(err, with_type=True)
    return TrialOutcome(
        state=state,
        score=curve_score(curve) if state == "complete" else None,
        curve=curve,
        epochs=done["epochs"],
        time_s=time.perf_counter() - start,
        error=error,
        messages=messages,
        num_classes=classes,
    )


def final_test_accuracy(run_dir: Path) -> float:
    """The test accuracy of a finished run's final model (``last.pt``), read once."""
    from chanloss.training.loader import load_run

    loaded = load_run(run_dir / "last.pt", device=None, with_data=True)
    assert loaded.trainer is not None
    return loaded.trainer.accuracy("test")


def run_confirm(raw: dict[str, Any], run_dir: Path, read_test: bool = True) -> RunOutcome:
    """A confirmation run: train (or resume, or reuse when finished), then, with
    ``read_test``, read the final model's test accuracy once. Cached in ``run_dir/confirm.json``."""
    from chanloss.training.trainer import train

    cache = run_dir / "confirm.json"
    config = load_config(raw=raw)
    if cache.exists():
        stored = json.loads(cache.read_text())
        if stored.pop("config", None) == config_to_dict(config) and (
            stored.get("test_acc") is not None or not read_test
        ):
            return RunOutcome(**stored)
    start = time.perf_counter()
    stored_cfg = run_dir / "config.yaml"
    if stored_cfg.exists() and resolved_config_dict(
        yaml_load(stored_cfg.read_text())
    ) != config_to_dict(config):
        raise ConfigError(f"{run_dir} holds a run of another config; delete it")
    messages: list[str] = []
    with collected(messages):
        summary = train(config, run_dir, resume=(run_dir / "last.pt").exists(), verbose=0,
                        evaluate_test=False)  # fmt: skip
        test = final_test_accuracy(run_dir) if read_test else None
    curve = [float(v) for v in summary["val_curve"]]
    result = RunOutcome(
        seed=config.seed,
        score=curve_score(curve) if curve else None,
        curve=curve,
        test_acc=test,
        time_s=time.perf_counter() - start,
        messages=messages,
    )
    write_text(cache, json.dumps({"config": config_to_dict(config), **asdict(result)}, indent=1))
    return result


# -- worker processes ----------------------------------------------------------------------------
def init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def trial_task(task: dict[str, Any]) -> TrialOutcome:
    """A trial in a worker process: the study reopened from its storage."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=task["study"],
        storage=open_storage(task["storage"]),
        pruner=make_pruner(task["pruner"], task["epochs"]),
    )
    trial = optuna.trial.Trial(study, task["trial_id"])
    return run_trial(trial, task["raw"], Path(task["run_dir"]))


def _confirm_task(task: dict[str, Any]) -> RunOutcome:
    return run_confirm(task["raw"], Path(task["run_dir"]), task["read_test"])


def executor_for(jobs: int) -> Any:
    """``jobs`` worker processes (spawned, ``cores // jobs`` torch threads each), or
    :class:`Inline` for one job."""
    import multiprocessing

    if jobs == 1:
        return Inline()
    return ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(max(1, cores() // jobs),),
    )


def confirm_runs(
    tasks: list[tuple[dict[str, Any], Path]],
    *,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
    labels: list[str] | None = None,
    read_test: bool | list[bool] = True,
    messages: Callable[[list[str]], None] | None = None,
) -> list[RunOutcome]:
    """:func:`run_confirm` for every ``(raw config, run dir)``, ``jobs`` at a time; the results
    in the order of ``tasks``. ``messages`` receives what each run printed or warned."""
    reads = read_test if isinstance(read_test, list) else [read_test] * len(tasks)
    executor = executor_for(jobs)
    results = []
    try:
        futures = [
            executor.submit(_confirm_task, {"raw": raw, "run_dir": str(run_dir), "read_test": read})
            for (raw, run_dir), read in zip(tasks, reads, strict=True)
        ]
        for i, fut in enumerate(futures):
            res = fut.result()
            results.append(res)
            if messages is not None:
                messages(res.messages)
            if log is not None:
                name = labels[i] if labels else Path(tasks[i][1]).parent.name
                val = f"val {100 * res.score:.2f}%" if res.score is not None else "trained"
                test = f", test {100 * res.test_acc:.2f}%" if res.test_acc is not None else ""
                log(f"  {name} seed {res.seed}: {val}{test} ({clock(res.time_s)})")
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return results


class Inline:
    """The executor of ``--jobs 1``: runs each task in this process when it is submitted."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as err:  # Ctrl-C included: re-raised by result()
            fut.set_exception(err)
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass
