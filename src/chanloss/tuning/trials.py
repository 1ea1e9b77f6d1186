"""One trial or confirmation run, in this process or in worker processes.

A run's outcome is what the training call returns (its validation curve, epochs, the test
accuracy read once where asked); a plain dict appears only in a confirmation run's cache file
(``confirm.json``) and in the task a worker process receives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chanloss.config import ConfigError, TrainConfig, config_to_dict, load_config
from chanloss.core.atomic import write_json
from chanloss.core.errors import TrainingDiverged
from chanloss.core.text import clock
from chanloss.experiments.pool import Inline, executor_for
from chanloss.run.result import RunResult
from chanloss.tuning.pruners import make_pruner
from chanloss.tuning.stats import curve_score
from chanloss.tuning.storage import open_storage

__all__ = [
    "Inline",
    "RunOutcome",
    "TrialOutcome",
    "confirm_runs",
    "executor_for",
    "final_test_accuracy",
    "run_confirm",
    "run_trial",
]


@dataclass
class TrialOutcome:
    """A search trial: ``state`` complete | pruned | diverged | failed; ``score`` the mean of
    the last epochs' validation accuracy (:func:`~chanloss.tuning.stats.curve_score`, complete
    trials); ``curve`` the validation accuracy of every evaluated epoch."""

    state: str
    score: float | None
    curve: list[float]
    epochs: int
    time_s: float
    error: str | None = None
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

    from chanloss.run.session import train

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

    state, error, classes = "complete", None, None
    try:
        config = load_config(raw=raw)
        summary = train(config, run_dir, verbose=0, evaluate_test=False, on_epoch_end=on_epoch_end)
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
        num_classes=classes,
    )


def final_test_accuracy(run_dir: Path) -> float:
    """The test accuracy of a finished run's final model (``last.pt``), read once."""
    from chanloss.run.loader import load_run

    loaded = load_run(run_dir / "last.pt", device=None, with_data=True)
    assert loaded.trainer is not None
    return loaded.trainer.accuracy("test")


def _validation_only(config: TrainConfig, run_dir: Path) -> RunResult:
    """The runner's worker for tune: train (or resume, or read) a run without reading the test
    split (:func:`~chanloss.experiments.runner.train_locked` reads it)."""
    from chanloss.experiments.runner import read_result, run_status
    from chanloss.run.run_dir import RunDir
    from chanloss.run.session import train

    with RunDir(run_dir) as run:
        status = run_status(run_dir, config)
        if status == "done":
            return read_result(run_dir)
        return train(config, run, resume=status == "resume", verbose=0, evaluate_test=False)


def _cached(run_dir: Path, config: TrainConfig, read_test: bool) -> RunOutcome | None:
    cache = run_dir / "confirm.json"
    if not cache.exists():
        return None
    stored = json.loads(cache.read_text())
    if stored.pop("config", None) != config_to_dict(config):
        return None
    if read_test and stored.get("test_acc") is None:
        return None
    return RunOutcome(**stored)


def run_confirm(raw: dict[str, Any], run_dir: Path, read_test: bool = True) -> RunOutcome:
    """One run after the search (see :func:`confirm_runs`)."""
    return confirm_runs([(raw, run_dir)], read_test=read_test)[0]


# -- worker processes ----------------------------------------------------------------------------
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


def confirm_runs(
    tasks: list[tuple[dict[str, Any], Path]],
    *,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
    labels: list[str] | None = None,
    read_test: bool | list[bool] = True,
    after_s: float = 0.0,
) -> list[RunOutcome]:
    """The runs after the search, ``(raw config, run dir)`` each, through the runner
    (:func:`~chanloss.experiments.runner.run_many`, ``jobs`` at a time): trained on validation only,
    resumed when cut short, reused when finished (``run_dir/confirm.json``); then, where
    ``read_test`` says so, the final model's test accuracy is read once. In the order given.
    Each finished run is logged with the ETA of the whole command: these runs' mean time for
    each run left, plus ``after_s`` (the runs after these)."""
    from chanloss.experiments.runner import run_many

    reads = read_test if isinstance(read_test, list) else [read_test] * len(tasks)
    configs = [(load_config(raw=raw), Path(run_dir)) for raw, run_dir in tasks]
    results: dict[int, RunOutcome] = {}
    todo = []
    for i, (config, run_dir) in enumerate(configs):
        cached = _cached(run_dir, config, reads[i])
        if cached is not None:
            results[i] = cached
        else:
            todo.append(i)
    started = time.perf_counter()

    def finished(index: int, result: RunResult) -> None:
        i = todo[index]
        config, run_dir = configs[i]
        curve = [float(v) for v in result.get("val_curve", [])]
        outcome = RunOutcome(
            seed=config.seed,
            score=curve_score(curve) if curve else None,
            curve=curve,
            test_acc=final_test_accuracy(run_dir) if reads[i] else None,
            time_s=time.perf_counter() - started,
        )
        write_json(run_dir / "confirm.json", {"config": config_to_dict(config), **asdict(outcome)})
        results[i] = outcome
        if log is not None:
            name = labels[i] if labels else run_dir.parent.name
            val = f"val {100 * outcome.score:.2f}%" if outcome.score is not None else "trained"
            test = f", test {100 * outcome.test_acc:.2f}%" if outcome.test_acc is not None else ""
            trained, left = len(results) - (len(tasks) - len(todo)), len(tasks) - len(results)
            eta = outcome.time_s / trained * left + after_s
            log(f"  {name} seed {outcome.seed}: {val}{test} ({clock(outcome.time_s)} so far, "
                f"ETA {clock(eta)})")  # fmt: skip

    run_many([configs[i] for i in todo], jobs=jobs, on_finished=finished, worker=_validation_only)
    return [results[i] for i in range(len(tasks))]
