"""The one process pool: the inline executor of one job, spawned workers with a share of the
cores, replies handed back in this process, and a failed task stopping the others."""

from __future__ import annotations

import math
import operator
import os

import pytest

from chanloss.experiments import pool


def test_one_job_runs_inline_when_submitted_and_keeps_the_error_for_result():
    executor = pool.executor_for(1)
    assert isinstance(executor, pool.Inline)
    calls: list[int] = []
    fut = executor.submit(calls.append, 3)
    assert calls == [3] and fut.done() and fut.result() is None
    failed = executor.submit(operator.truediv, 1, 0)
    with pytest.raises(ZeroDivisionError):
        failed.result()
    with executor as same:
        assert same is executor


def test_workers_share_the_cores():
    cores = len(os.sched_getaffinity(0))
    assert pool.cores() == cores
    assert pool.threads_per_worker(1) == cores
    assert pool.threads_per_worker(2) == max(1, cores // 2)
    assert pool.threads_per_worker(10 * cores) == 1


def test_run_in_workers_hands_every_reply_back_by_index():
    replies: dict[int, float] = {}
    tasks = [(4.0,), (9.0,), (16.0,)]
    pool.run_in_workers(math.sqrt, tasks, jobs=2, on_reply=replies.__setitem__, poll_s=0.05)
    assert replies == {0: 2.0, 1: 3.0, 2: 4.0}


def test_a_failed_task_or_a_failing_reply_handler_is_raised():
    with pytest.raises(ZeroDivisionError):
        pool.run_in_workers(operator.truediv, [(1, 1), (1, 0)], jobs=2, on_reply=lambda i, r: None)

    def refuse(index: int, reply: float) -> None:
        raise RuntimeError(f"reply {index} refused")

    with pytest.raises(RuntimeError, match="refused"):
        pool.run_in_workers(math.sqrt, [(1.0,), (4.0,)], jobs=2, on_reply=refuse)
