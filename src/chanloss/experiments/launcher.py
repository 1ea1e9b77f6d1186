"""``chanloss train --nproc N``: start N training processes on this machine.

:func:`launch` starts N ``python -m chanloss train ...`` processes (:func:`worker_command`) with
torchrun's environment variables, forwards SIGINT/SIGTERM/SIGUSR1/SIGHUP to them and reports a
failed process in one line with the path of its log. The processes then train as under
``torchrun`` (:mod:`chanloss.run.distributed`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chanloss.core.errors import ConfigError
from chanloss.experiments.pool import threads_per_worker
from chanloss.run.distributed import env_world_size

__all__ = ["FORWARDED", "GRACE_S", "INTERRUPTED", "NPROC_ENV", "launch", "worker_command"]

NPROC_ENV = "CHANLOSS_NPROC"  # in the workers of --nproc: N (for the resume hint)
FORWARDED = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGHUP")
    if hasattr(signal, name)
)
INTERRUPTED = {130, 138, 143}  # a worker stopped by a forwarded signal after saving
GRACE_S = 10.0  # after a worker fails, how long the others get to end by themselves


def worker_command(argv: Sequence[str]) -> list[str]:
    """The command line of one ``--nproc`` worker: ``python -m chanloss ARGV`` with ``--nproc``
    (or any abbreviation of it that argparse accepts, with its value) removed."""
    kept: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        name, eq, _ = word.partition("=")
        if len(name) >= 3 and "--nproc".startswith(name):
            skip = not eq
            continue
        kept.append(word)
    return [sys.executable, "-m", "chanloss", *kept]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the worker gets SIGTERM (and saves) if the launcher is killed."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(nproc: int, argv: Sequence[str], *, out_dir: str | Path) -> int:
    """Run ``chanloss ARGV`` in ``nproc`` processes on this machine; the exit status.

    Each worker gets torchrun's variables (``RANK``, ``WORLD_SIZE``, ``MASTER_PORT``...) and,
    without ``OMP_NUM_THREADS`` in the environment, ``cores // nproc`` threads (the share
    :func:`chanloss.experiments.pool.threads_per_worker` gives). Rank 0 writes to this terminal;
    rank ``r`` > 0 to ``OUT/logs/rank<r>.log`` (removed when empty).
    SIGINT, SIGTERM, SIGUSR1 and SIGHUP are passed on to every worker (each finishes its step
    and rank 0 saves ``last.pt``). When a worker fails the others get :data:`GRACE_S` seconds
    to end, then are stopped; the failure is reported in one line naming the log.
    """
    if env_world_size() > 1:
        raise ConfigError(
            "--nproc starts the processes itself; this process already runs under torchrun "
            f"(WORLD_SIZE={env_world_size()}), so leave --nproc out"
        )
    from chanloss.run.run_dir import RunDir

    out_dir = Path(out_dir)
    if out_dir.exists():  # a run directory in use: one line now, not N tracebacks later
        RunDir(out_dir).acquire().abandon()
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    files: list[Any] = []

    def forward(signum: int, frame: Any) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.send_signal(signum)

    handlers = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        _start_workers(procs, files, worker_command(argv), _worker_env(nproc), logs)
        first = _watch(procs)
    finally:
        for proc in procs:  # an exception here (a second Ctrl-C): nothing is left running
            if proc.poll() is None:
                _stop(proc)
        for sig, old in handlers.items():
            signal.signal(sig, old)
        for f in files:
            f.close()
        _remove_empty_logs(logs, nproc)
    if first is None:
        return next((c for c in (proc.returncode for proc in procs) if c in INTERRUPTED), 0)
    return _report_failure(first, nproc, logs)


def _worker_env(nproc: int) -> dict[str, str]:
    """The environment of every worker but its rank: torchrun's variables, the thread share."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_worker(nproc)))
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        GROUP_RANK="0",
        **{NPROC_ENV: str(nproc)},
    )
    return env


def _start_workers(
    procs: list[subprocess.Popen],
    files: list[Any],
    command: list[str],
    env: dict[str, str],
    logs: Path,
) -> None:
    """Start one process per rank into ``procs`` (appended as they start, so that the caller
    can stop them whatever happens); ranks > 0 write to ``logs/rank<r>.log``."""
    for rank in range(int(env["WORLD_SIZE"])):
        output = None
        if rank > 0:
            output = open(logs / f"rank{rank}.log", "wb")  # noqa: SIM115 - closed by launch
            files.append(output)
        procs.append(
            subprocess.Popen(
                command,
                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdout=output,
                stderr=output,
                start_new_session=True,  # a terminal's Ctrl-C reaches them once, from here
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        )


def _remove_empty_logs(logs: Path, nproc: int) -> None:
    for rank in range(1, nproc):
        path = logs / f"rank{rank}.log"
        if path.exists() and path.stat().st_size == 0:
            path.unlink()
    with contextlib.suppress(OSError):
        logs.rmdir()


def _report_failure(first: tuple[int, int], nproc: int, logs: Path) -> int:
    """The exit status of a failed launch, after one line naming the process and its log."""
    rank, code = first
    if rank == 0 and code > 0:  # rank 0 said why on this terminal
        return code
    how = f"exit status {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
    where = "its output is above" if rank == 0 else f"its output: {logs / f'rank{rank}.log'}"
    print(
        f"chanloss: error: process {rank} of {nproc} failed ({how}); {where}",
        file=sys.stderr,
        flush=True,
    )
    return code if code > 0 else 1


def _watch(procs: list[subprocess.Popen]) -> tuple[int, int] | None:
    """Wait for the workers; the first failure ``(rank, status)`` (None when none failed).
    After a failure the others get :data:`GRACE_S` seconds, then are stopped."""
    first: tuple[int, int] | None = None
    deadline = None
    while any(p.poll() is None for p in procs):
        if first is None:
            for rank, proc in enumerate(procs):
                code = proc.poll()
                if code is not None and code != 0 and code not in INTERRUPTED:
                    first, deadline = (rank, code), time.monotonic() + GRACE_S
                    break
        if deadline is not None and time.monotonic() > deadline:
            for proc in procs:
                if proc.poll() is None:
                    _stop(proc)
        time.sleep(0.05)
    if first is None:
        bad = [
            (r, p.returncode) for r, p in enumerate(procs) if p.returncode not in (0, *INTERRUPTED)
        ]
        first = bad[0] if bad else None
    return first


def _stop(proc: subprocess.Popen, wait_s: float = 5.0) -> None:
    """SIGTERM (and SIGCONT, for a stopped process), then SIGKILL after ``wait_s``."""
    with contextlib.suppress(OSError):
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
