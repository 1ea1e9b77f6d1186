"""The one process pool of chanloss: ``compare --jobs``, ``tune --jobs`` and the benchmark study
run their runs through it, and ``train --nproc`` gives its processes the same thread share.

- :func:`executor_for` is the executor of ``jobs`` runs at a time: ``jobs`` spawned worker
  processes with :func:`threads_per_worker` torch threads each, or :class:`Inline` (this
  process) for one job.
- :func:`run_in_workers` calls a module-level function for each task in those workers and
  hands each reply back in this process as it comes. When anything goes wrong (Ctrl-C, a failed
  task, an error raised by the caller's ``on_reply``) it stops the workers as
  :func:`stop_workers` does: tasks not started are cancelled, running ones are asked to stop
  like Ctrl-C asks (finish the step, save ``last.pt``) and then ended; the error is raised.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

__all__ = [
    "Inline",
    "cores",
    "executor_for",
    "init_worker",
    "run_in_workers",
    "stop_workers",
    "threads_per_worker",
]

GRACE_S = 60.0  # how long running workers get to save after being asked to stop


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def threads_per_worker(jobs: int) -> int:
    """The torch threads of each of ``jobs`` processes side by side: ``cores // jobs``, >= 1."""
    return max(1, cores() // jobs)


def init_worker(threads: int) -> None:
    """The start of every worker process: ``threads`` torch (and OpenMP) threads."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


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

    def __enter__(self) -> Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def executor_for(jobs: int, workers: int | None = None) -> Any:
    """``jobs`` at a time: ``workers`` (default ``jobs``) spawned worker processes with
    ``cores // jobs`` torch threads each, or :class:`Inline` for one job."""
    import multiprocessing

    if jobs == 1:
        return Inline()
    return ProcessPoolExecutor(
        max_workers=workers or jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(threads_per_worker(jobs),),
    )


def run_in_workers(
    fn: Callable[..., Any],
    tasks: Sequence[tuple[Any, ...]],
    *,
    jobs: int,
    on_reply: Callable[[int, Any], None],
    poll_s: float = 0.2,
) -> None:
    """``fn(*task)`` for every task in ``min(jobs, len(tasks))`` worker processes (``fn`` and
    the tasks must pickle); ``on_reply(index, reply)`` is called here as each one ends. A task
    that raises, Ctrl-C, or an error from ``on_reply`` stops the workers (see the module) and
    is raised."""
    pool = executor_for(jobs, workers=min(jobs, len(tasks)))
    with pool:
        futures: dict[Future, int] = {pool.submit(fn, *task): i for i, task in enumerate(tasks)}
        pending = set(futures)
        try:
            while pending:
                finished = {f for f in pending if f.done()}
                for future in finished:
                    on_reply(futures[future], future.result())  # a failed task raises here
                pending -= finished
                if pending:
                    time.sleep(poll_s)
        except BaseException:  # Ctrl-C, a failed task: stop the others, keep their files
            stop_workers(pool, pending)
            raise


def stop_workers(pool: ProcessPoolExecutor, pending: set[Any], grace: float = GRACE_S) -> None:
    """Cancel the tasks not started; ask the running ones to stop like Ctrl-C does (finish the
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
