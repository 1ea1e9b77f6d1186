"""Running a set of runs: each in its locked run directory, one at a time or in processes.

The API (``compare`` uses it; ``tune`` may too):

- :func:`run_status` says whether the run in a directory is ``new``, to ``resume`` (interrupted,
  or its ``epochs`` raised) or ``done``; a directory holding another config's run is an error.
- :func:`train_locked` trains (or resumes, or just reads) one run while holding its directory's
  lock and returns its :class:`~chanloss.run.result.RunResult`.
- :class:`KeepDiverged` wraps a worker so that a run that diverges is recorded
  (``diverged.json``) and reported instead of stopping the others.
- :func:`run_many` does that for ``[(config, run_dir), ...]`` with ``jobs`` at a time (``jobs >
  1``: worker processes of :mod:`chanloss.experiments.pool`, each with ``cores // jobs`` torch
  threads) and returns the results in the order given. Ctrl-C (or SIGTERM/SIGUSR1 through the command line) asks every running
  worker to save ``last.pt`` and raises :class:`~chanloss.core.errors.TrainingInterrupted`; a failed
  run stops the others (their files kept) and its error is raised.

Only a config's plain dict and the run directory cross the process boundary; a worker returns
its result as a dict, rebuilt as a ``RunResult`` here.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chanloss.config import (
    TrainConfig,
    config_to_dict,
    read_yaml,
    resolved_config_dict,
    validate_config,
)
from chanloss.core.atomic import write_json
from chanloss.core.errors import ConfigError, TrainingDiverged, TrainingInterrupted
from chanloss.experiments.pool import run_in_workers
from chanloss.run.result import RunResult, read_result
from chanloss.run.run_dir import RunDir

__all__ = [
    "DIVERGED_FILE",
    "KeepDiverged",
    "RunResult",
    "check_same_config",
    "read_result",
    "run_many",
    "run_status",
    "train_locked",
]

DIVERGED_FILE = "diverged.json"  # in a run directory: the run diverged (KeepDiverged)

# Keys that may differ between a stored run and the config without changing what it trains.
IGNORED_KEYS = (
    "device",
    "workers",
    "tensorboard",
    "eval_batch_size",
    "epochs",
    "test_every_epoch",
)

Worker = Callable[[TrainConfig, Path], RunResult]


def run_status(run_dir: Path, config: TrainConfig) -> str:
    """``new``, ``resume`` (interrupted, or ``epochs`` raised) or ``done``."""
    if not (run_dir / "last.pt").exists():
        return "new"
    check_same_config(run_dir, config)
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("finished") and summary.get("epochs") == config.epochs:
            return "done"
        if summary.get("epochs", 0) > config.epochs:
            raise ConfigError(
                f"{run_dir} was trained for {summary['epochs']} epochs, more than the "
                f"{config.epochs} asked for; use another --out"
            )
    return "resume"


def check_same_config(run_dir: Path, config: TrainConfig) -> None:
    """Raise :class:`~chanloss.core.errors.ConfigError` unless ``run_dir`` holds a run of
    ``config`` (the keys that do not change what a run trains aside)."""
    stored_path = run_dir / "config.yaml"
    stored = resolved_config_dict(read_yaml(stored_path)) if stored_path.exists() else None
    current = config_to_dict(config)
    if not isinstance(stored, dict) or _strip(stored, current) != _strip(current, current):
        raise ConfigError(
            f"{run_dir} holds a run of a different config; use another --out or delete it"
        )


def _strip(raw: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``raw`` without the keys that do not change what a run trains; an ``image_size`` when
    the ``current`` config leaves it ``auto`` (a run stores the size it chose)."""
    out = {k: v for k, v in raw.items() if k not in IGNORED_KEYS}
    if isinstance(out.get("data"), dict):
        out["data"] = {**out["data"], "root": None}
        options = dict(out["data"].get("options") or {})
        if current["data"].get("options", {}).get("image_size", "auto") == "auto":
            options.pop("image_size", None)
        out["data"]["options"] = options
    return out


def train_locked(config: TrainConfig, run_dir: Path) -> RunResult:
    """Train (or resume, or read the result of) one run while holding its directory's lock;
    the status is checked again under the lock."""
    from chanloss.run.session import train

    with RunDir(run_dir) as run:
        status = run_status(run_dir, config)
        if status == "done":
            return read_result(run_dir)
        return train(config, run, resume=status == "resume", verbose=0)


@dataclass(frozen=True)
class KeepDiverged:
    """A worker that records a diverged run instead of raising: ``worker(config, run_dir)``,
    and when training diverges (:class:`~chanloss.core.errors.TrainingDiverged`) the error is
    written to ``run_dir/diverged.json`` and returned as ``RunResult({"diverged": error})``. A
    run directory holding that record (and a run of the same config) is not trained again."""

    worker: Worker = train_locked

    def __call__(self, config: TrainConfig, run_dir: Path) -> RunResult:
        record = Path(run_dir) / DIVERGED_FILE
        if record.exists():
            check_same_config(Path(run_dir), config)
            return RunResult({"diverged": json.loads(record.read_text())["error"]}, run_dir)
        try:
            return self.worker(config, Path(run_dir))
        except TrainingDiverged as err:
            error = " ".join(str(err).split())
            write_json(record, {"error": error})
            return RunResult({"diverged": error}, run_dir)


def run_many(
    runs: Sequence[tuple[TrainConfig, Path]],
    *,
    jobs: int = 1,
    on_finished: Callable[[int, RunResult], None] | None = None,
    worker: Worker = train_locked,
) -> list[RunResult]:
    """Run every ``(config, run_dir)`` with :func:`train_locked` (or ``worker``, a module-level
    function when ``jobs > 1``) and return the results in the order given.

    ``jobs`` runs go at a time (worker processes when ``jobs > 1`` and there is more than one
    run); ``on_finished(index, result)`` is called in this process as each run ends.
    """
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    results: dict[int, RunResult] = {}
    if jobs == 1 or len(runs) <= 1:
        for index, (config, run_dir) in enumerate(runs):
            results[index] = worker(config, Path(run_dir))
            if on_finished is not None:
                on_finished(index, results[index])
    else:
        results = _run_in_processes(runs, jobs, on_finished, worker)
    return [results[i] for i in range(len(runs))]


def _process_worker(worker: Worker, raw: dict[str, Any], run_dir: str) -> dict:
    """One run in a worker process (module level, so that it can be pickled)."""
    try:
        result = worker(validate_config(raw), Path(run_dir))
    except KeyboardInterrupt as err:  # Ctrl-C: last.pt is saved; a clean return keeps the pool
        return {"interrupted": str(err)}
    return {"summary": dict(result)}


def _run_in_processes(
    runs: Sequence[tuple[TrainConfig, Path]],
    jobs: int,
    on_finished: Callable[[int, RunResult], None] | None,
    worker: Worker,
) -> dict[int, RunResult]:
    done: dict[int, RunResult] = {}

    def on_reply(index: int, reply: dict[str, Any]) -> None:
        run_dir = Path(runs[index][1])
        if "interrupted" in reply:
            raise TrainingInterrupted(reply["interrupted"], run_dir)
        done[index] = RunResult(reply["summary"], run_dir)
        if on_finished is not None:
            on_finished(index, done[index])

    tasks = [(worker, config_to_dict(config), str(run_dir)) for config, run_dir in runs]
    try:
        run_in_workers(_process_worker, tasks, jobs=jobs, on_reply=on_reply)
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM/SIGUSR1 through the CLI's handler
        raise TrainingInterrupted(
            "interrupted; the runs in progress saved last.pt",
            Path(runs[0][1]).parent.parent,
            getattr(err, "signum", signal.SIGINT),
        ) from None
    return done
