"""One trial or confirmation run, in this process or in worker processes."""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from chanloss.training.config import (
    ConfigError,
    config_to_dict,
    load_config,
    resolved_config_dict,
    yaml_load,
)
from chanloss.tuning.common import clock, cores, write_text
from chanloss.tuning.pruners import make_pruner
from chanloss.tuning.storage import open_storage

__all__ = ["Inline", "confirm_runs", "final_test_accuracy", "run_confirm", "run_trial"]


def _diverged(err: BaseException) -> bool:
    from chanloss.errors import TrainingDiverged

    return isinstance(err, TrainingDiverged)


def _last_val(run_dir: Path) -> float | None:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        vals = [r["val_acc"] for r in csv.DictReader(f) if r.get("val_acc")]
    return float(vals[-1]) if vals else None


def run_trial(trial: Any, raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train one trial's config into ``run_dir`` (test split never read), reporting the
    validation accuracy of every evaluated epoch to ``trial`` and stopping when it is pruned.

    Returns ``{"state": complete | pruned | diverged | failed, "value", "epochs", "time_s",
    "error"}``; ``value`` is the final epoch's validation accuracy (complete trials).
    """
    import optuna

    from chanloss.training.session import train

    start = time.perf_counter()
    done = {"epochs": 0}

    def on_epoch_end(epoch: int, row: dict[str, Any]) -> None:
        done["epochs"] = epoch
        if row.get("val_acc") is None:
            return
        trial.report(float(row["val_acc"]), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    result: dict[str, Any] = {"state": "complete", "value": None, "error": None}
    try:
        config = load_config(raw=raw)
        summary = train(config, run_dir, verbose=0, evaluate_test=False, on_epoch_end=on_epoch_end)
        result["value"] = _last_val(run_dir)
        if result["value"] is None:
            raise ConfigError(f"trial run {run_dir} recorded no validation accuracy")
        done["epochs"] = summary["epochs"]
    except optuna.TrialPruned:
        result["state"] = "pruned"
    except ConfigError as err:
        result["state"] = "diverged" if _diverged(err) else "failed"
        result["error"] = " ".join(str(err).split())
    except (RuntimeError, ValueError, TypeError, OSError) as err:
        result["state"] = "failed"
        result["error"] = f"{type(err).__name__}: {' '.join(str(err).split())}"
    result["epochs"] = done["epochs"]
    result["time_s"] = time.perf_counter() - start
    return result


def final_test_accuracy(run_dir: Path) -> float:
    """The test accuracy of a finished run's final model (``last.pt``), read once."""
    from chanloss.training.loader import load_run

    loaded = load_run(run_dir / "last.pt", device=None, with_data=True)
    assert loaded.trainer is not None
    return loaded.trainer.accuracy("test")


def run_confirm(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A confirmation run: train (or resume, or reuse when finished), then read the final
    model's test accuracy once. ``{"val_acc", "test_acc", "time_s"}``; cached in
    ``run_dir/confirm.json``."""
    from chanloss.training.session import train

    cache = run_dir / "confirm.json"
    config = load_config(raw=raw)
    if cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("config") == config_to_dict(config):
            return stored
    start = time.perf_counter()
    summary_path = run_dir / "summary.json"
    finished = summary_path.exists() and json.loads(summary_path.read_text()).get("finished")
    stored_cfg = run_dir / "config.yaml"
    if stored_cfg.exists() and resolved_config_dict(
        yaml_load(stored_cfg.read_text())
    ) != config_to_dict(config):
        raise ConfigError(f"{run_dir} holds a run of another config; delete it")
    if not finished:
        train(config, run_dir, resume=(run_dir / "last.pt").exists(), verbose=0,
              evaluate_test=False)  # fmt: skip
    val = _last_val(run_dir)
    test = final_test_accuracy(run_dir)
    result = {
        "config": config_to_dict(config),
        "seed": config.seed,
        "val_acc": val,
        "test_acc": test,
        "time_s": time.perf_counter() - start,
    }
    write_text(cache, json.dumps(result, indent=1) + "\n")
    return result


# -- worker processes ----------------------------------------------------------------------------
def init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def trial_task(task: dict[str, Any]) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=task["study"],
        storage=open_storage(task["storage"]),
        pruner=make_pruner(task["pruner"], task["epochs"]),
    )
    trial = optuna.trial.Trial(study, task["trial_id"])
    return run_trial(trial, task["raw"], Path(task["run_dir"]))


def _confirm_task(task: dict[str, Any]) -> dict[str, Any]:
    return run_confirm(task["raw"], Path(task["run_dir"]))


def confirm_runs(
    tasks: list[tuple[dict[str, Any], Path]],
    *,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
    labels: list[str] | None = None,
) -> list[dict[str, Any]]:
    """:func:`run_confirm` for every ``(raw config, run dir)``, ``jobs`` at a time in separate
    processes (``cores // jobs`` torch threads each); the results in the order of ``tasks``."""
    import multiprocessing

    if jobs > 1:
        executor: Any = ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(max(1, cores() // jobs),),
        )
    else:
        executor = Inline()
    results = []
    try:
        futures = [
            executor.submit(_confirm_task, {"raw": raw, "run_dir": str(run_dir)})
            for raw, run_dir in tasks
        ]
        for i, fut in enumerate(futures):
            res = fut.result()
            results.append(res)
            if log is not None:
                name = labels[i] if labels else Path(tasks[i][1]).parent.name
                log(
                    f"confirm {name:<5} seed {res['seed']}: val {100 * res['val_acc']:.2f}% "
                    f"({clock(res['time_s'])})"
                )
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
