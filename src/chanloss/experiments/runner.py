"""Running a set of runs: each in its locked run directory, one at a time or in processes.

The API (``compare`` uses it; ``tune`` may too):

- :func:`run_status` says whether the run in a directory is ``new``, to ``resume`` (interrupted,
  or its ``epochs`` raised) or ``done``; a directory holding another config's run is an error.
- :func:`train_locked` trains (or resumes, or just reads) one run while holding its directory's
  lock and returns its :class:`~chanloss.run.result.RunResult`.
- :func:`run_many` does that for ``[(config, run_dir), ...]`` with ``jobs`` at a time (``jobs >
  1``: worker processes, each with ``cpu_count // jobs`` torch threads) and returns the results
  in the order given. Ctrl-C (or SIGTERM/SIGUSR1 through the command line) asks every running
  worker to save ``last.pt`` and raises :class:`~chanloss.core.errors.TrainingInterrupted`; a failed
  run stops the others (their files kept) and its error is raised.

Only a config's plain dict and the run directory cross the process boundary; a worker returns
its result as a dict, rebuilt as a ``RunResult`` here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from chanloss.config import (
    TrainConfig,
    config_to_dict,
    read_yaml,
    resolved_config_dict,
    validate_config,
)
from chanloss.core.errors import ConfigError, TrainingInterrupted
from chanloss.run.result import RunResult, read_result
from chanloss.run.run_dir import RunDir

__all__ = ["RunResult", "read_result", "run_many", "run_status", "train_locked"]

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
    stored_path = run_dir / "config.yaml"
    stored = resolved_config_dict(read_yaml(stored_path)) if stored_path.exists() else None
    current = config_to_dict(config)
    if not isinstance(stored, dict) or _strip(stored, current) != _strip(current, current):
        raise ConfigError(
            f"{run_dir} holds a run of a different config; use another --out or delete it"
        )
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


def _process_worker(worker: Worker, raw: dict[str, Any], run_dir: str, threads: int) -> dict:
    """One run in a worker process (module level, so that it can be pickled)."""
    import torch

    torch.set_num_threads(threads)
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
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // jobs)
    done: dict[int, RunResult] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(runs)), mp_context=context) as pool:
        futures: dict[Future, int] = {
            pool.submit(
                _process_worker, worker, config_to_dict(config), str(run_dir), threads
            ): index
            for index, (config, run_dir) in enumerate(runs)
        }
        pending = set(futures)
        try:
            while pending:
                finished = {f for f in pending if f.done()}
                for future in finished:
                    index = futures[future]
                    run_dir = Path(runs[index][1])
                    reply = future.result()  # a failed run raises here
                    if "interrupted" in reply:
                        raise TrainingInterrupted(reply["interrupted"], run_dir)
                    done[index] = RunResult(reply["summary"], run_dir)
                    if on_finished is not None:
                        on_finished(index, done[index])
                pending -= finished
                if pending:
                    time.sleep(0.2)
        except TrainingInterrupted:
            _stop_workers(pool, pending)
            raise
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM/SIGUSR1 through the CLI's handler
            _stop_workers(pool, pending)
            raise TrainingInterrupted(
                "interrupted; the runs in progress saved last.pt",
                Path(runs[0][1]).parent.parent,
                getattr(err, "signum", signal.SIGINT),
            ) from None
        except BaseException:  # a failed run: stop the others, keep their files
            _stop_workers(pool, pending)
            raise
    return done


def _stop_workers(pool: ProcessPoolExecutor, pending: set[Any], grace: float = 60.0) -> None:
    """Cancel the runs not started; ask the running ones to stop like Ctrl-C does (finish the
    step, save ``last.pt``), wait up to ``grace`` seconds, then end the workers."""
    running = {f for f in pending if not f.cancel()}
    workers = list(getattr(pool, "_processes", {}).values())
    if running:
        for process in workers:
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    while any(not f.done() for f in running) and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in workers:
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
