"""The run directory: one owner at a time, atomic files, permissions that follow the umask.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.csv`` (one row per
epoch), ``summary.json``, ``last.pt`` and ``best.pt``, and while a run owns it, the lock
``.chanloss.lock`` with ``.chanloss.lock.json`` naming the owner (pid, host, start time).

- **One owner.** :meth:`RunDir.acquire` takes an exclusive lock (``filelock``; ``flock`` where
  the file system has it) held until :meth:`RunDir.release`. A second run into the same
  directory, from this machine or another one that sees the same file system, is refused with
  a one-line :class:`RunDirBusy` naming the owner. A lock left by a process of this host that
  no longer exists (its pid is gone) is stale and taken over; a lock of another host cannot
  be checked and is refused (remove ``.chanloss.lock`` by hand if that run is really gone).
- **Atomic files.** Every file is written to a temporary ``.NAME.*.tmp`` next to it and renamed
  over it, so a reader (or a run killed mid-write) sees the old or the new file, never half
  of one; the owner removes such strays when it starts.
- **Permissions.** Files are created with mode ``0o666`` filtered by the umask, like any other
  program's files (``umask 022`` gives ``-rw-r--r--``, ``umask 002`` group-writable files).

Usage (what ``train``, ``compare`` and ``tune`` do)::

    with RunDir("runs/a") as run:          # acquire() ... release()
        run.write_json("summary.json", {"finished": True})
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import filelock
import torch

from chanloss.core.atomic import (
    atomic_copy,
    atomic_open,
    open_temp,
    write_json,
    write_png,
    write_text,
)
from chanloss.core.errors import CheckpointError, ConfigError, NonFiniteStateError, RunDirBusy
from chanloss.core.text import pid_alive
from chanloss.run.distributed import broadcast_object, is_main_process

__all__ = [
    "HOLDER_FILE",
    "LOCK_FILE",
    "NonFiniteStateError",
    "RunDir",
    "RunDirBusy",
    "atomic_copy",
    "check_start",
    "owned",
    "atomic_open",
    "open_temp",
    "write_json",
    "write_png",
]

LOCK_FILE = ".chanloss.lock"
HOLDER_FILE = ".chanloss.lock.json"
RUN_FILES = ("last", "best", "metrics", "summary", "config")  # names of strays to remove


# -- the lock ----------------------------------------------------------------------------------
class RunDir:
    """The run directory ``path`` of one run (see the module docstring).

    ``acquire()`` creates the directory, checks that it is writable, takes the lock and removes
    stray temporary files of a killed run; ``release()`` lets it go. The object is also a
    context manager, and its write methods work with or without the lock (``Trainer`` used on
    its own writes without one; ``train``, ``compare`` and ``tune`` hold it).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: filelock.BaseFileLock | None = None
        self.created = False  # acquire() created the directory
        self._made_lock_file = False  # ... or the lock file

    # paths
    @property
    def last(self) -> Path:
        """``last.pt``: the latest checkpoint (``--resume`` reads it)."""
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        """``best.pt``: the checkpoint of the best validation epoch (else the last one)."""
        return self.path / "best.pt"

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._lock is not None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}{', locked' if self.locked else ''})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ownership
    def __enter__(self) -> RunDir:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> RunDir:
        """Own the directory: create it, probe it, lock it, remove strays; returns ``self``.

        Raises :class:`RunDirBusy` when another live run holds it and :class:`ConfigError`
        when it cannot be created or written. Acquiring a held ``RunDir`` again is a no-op.
        """
        if self._lock is not None:
            return self
        self.created = self.prepare()
        self._made_lock_file = not (self.path / LOCK_FILE).exists()
        try:
            self._lock = self._take_lock()
        except BaseException:
            self.abandon()
            raise
        self._write_holder()
        self.remove_strays()
        return self

    def release(self) -> None:
        """Let the directory go (the lock file stays; a later owner reuses it)."""
        lock, self._lock = self._lock, None
        if lock is None:
            return
        with contextlib.suppress(OSError):
            (self.path / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()

    def prepare(self) -> bool:
        """Create the directory if needed and check that files can be written in it (a probe
        file is written, flushed and removed). Returns whether it was created; raises
        :class:`ConfigError` naming the directory."""
        out = self.path
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"cannot create the run directory {out} ({err.strerror or err}); expected a "
                "writable directory (--out)"
            ) from None
        try:
            fd, probe = tempfile.mkstemp(dir=out, prefix=".chanloss-probe-", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(bytes(4096))
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                Path(probe).unlink(missing_ok=True)
        except OSError as err:
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()
            raise ConfigError(
                f"cannot write in the run directory {out} ({err.strerror or err}); expected a "
                "writable directory with free space (--out)"
            ) from None
        return created

    def abandon(self) -> None:
        """Release after a failed start, leaving the directory as it was found: the lock file
        is removed if :meth:`acquire` made it, and the directory if it made that and nothing
        else is in it (nothing of a run is ever removed)."""
        lock, self._lock = self._lock, None
        with contextlib.suppress(OSError):
            if lock is not None:
                (self.path / HOLDER_FILE).unlink(missing_ok=True)
                if self._made_lock_file:
                    (self.path / LOCK_FILE).unlink(missing_ok=True)
            if self.created and not any(self.path.iterdir()):
                self.path.rmdir()
        if lock is not None:
            lock.release()

    def remove_strays(self) -> None:
        """Remove the temporary files of a write cut short by a kill (owner only)."""
        for stray in self.path.glob(".*.tmp"):
            if stray.name.split(".")[1] in RUN_FILES:
                stray.unlink(missing_ok=True)

    def holder(self) -> dict[str, Any] | None:
        """The owner recorded in ``.chanloss.lock.json`` (pid, host, since), if readable."""
        try:
            info = json.loads((self.path / HOLDER_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def _new_lock(self) -> filelock.BaseFileLock:
        return filelock.FileLock(self.path / LOCK_FILE, timeout=0, thread_local=False)

    def _take_lock(self) -> filelock.BaseFileLock:
        for _ in range(3):
            lock = self._new_lock()
            try:
                lock.acquire(timeout=0)
                return lock
            except filelock.Timeout:
                pass
            except NotImplementedError:  # filelock < 4 on a file system without flock
                lock = filelock.SoftFileLock(self.path / LOCK_FILE, timeout=0)
                try:
                    lock.acquire(timeout=0)
                    return lock
                except filelock.Timeout:
                    pass
            holder = self.holder()
            if holder is None or not self._stale(holder):
                raise RunDirBusy(self._busy_message(holder))
            # the owner is gone (its lock survives in a child that inherited it, or as a soft
            # lock file): start over with a fresh lock file
            for name in (HOLDER_FILE, LOCK_FILE):
                (self.path / name).unlink(missing_ok=True)
        raise RunDirBusy(self._busy_message(self.holder()))

    @staticmethod
    def _stale(holder: dict[str, Any]) -> bool:
        pid = holder.get("pid")
        return (
            holder.get("host") == socket.gethostname()
            and isinstance(pid, int)
            and pid != os.getpid()
            and not pid_alive(pid)
        )

    def _busy_message(self, holder: dict[str, Any] | None) -> str:
        if holder is None:
            who = f"an unknown process (no readable {HOLDER_FILE})"
        else:
            this = " (this process)" if holder.get("pid") == os.getpid() else ""
            who = (
                f"pid {holder.get('pid')}{this} on host {holder.get('host')}, since "
                f"{holder.get('since')}"
            )
        return (
            f"the run directory {self.path} is in use by another chanloss run ({who}); wait "
            f"for it to end, stop it, or use another --out (if that run is gone, remove "
            f"{self.path / LOCK_FILE})"
        )

    def _write_holder(self) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        write_json(
            self.path / HOLDER_FILE,
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
            },
        )

    # files
    def write_text(self, name: str, text: str) -> None:
        """Write ``name`` (``config.yaml``...) atomically."""
        write_text(self.path / name, text)

    def write_json(self, name: str, data: Any) -> None:
        """Write ``name`` (``summary.json``...) as JSON, atomically."""
        write_json(self.path / name, data)

    def write_metrics(self, rows: Iterable[dict[str, Any]], fields: Sequence[str]) -> None:
        """Write ``metrics.csv``: one row per epoch, ``fields`` as columns (None -> empty)."""
        with atomic_open(self.path / "metrics.csv") as f:
            out = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
            out.writeheader()
            for row in rows:
                out.writerow({k: "" if row.get(k) is None else row[k] for k in fields})

    def save(self, state: dict[str, Any], *, best: bool) -> None:
        """Write ``last.pt`` (and copy it to ``best.pt`` when ``best``), atomically.

        Refused with :class:`NonFiniteStateError` when the model's, losses' or optimizer's
        tensors hold NaN or inf: the previous checkpoints are kept.
        """
        from chanloss.run.checkpoint import save_checkpoint

        bad = non_finite_tensors(
            {k: state.get(k) for k in ("model", "losses", "optimizer")}, limit=3
        )
        if bad:
            kept = f"the previous {self.last.name} is kept" if self.last.exists() else "none kept"
            raise NonFiniteStateError(
                f"refusing to write {self.last}: {', '.join(bad)} hold NaN or inf values "
                f"(epoch {state.get('epoch')}); {kept}; lower optim.lr or set grad_clip"
            )
        save_checkpoint(state, self.last)
        if best:
            atomic_copy(self.last, self.best)

    def check_free_space(self, tensors: Iterable[torch.Tensor]) -> None:
        """Raise :class:`ConfigError` when the directory cannot hold the run's checkpoints.

        Estimate: ``last.pt``, ``best.pt`` and the temporary file of a write, each the given
        tensors (model and losses) three times (weights and up to two optimizer moments).
        """
        need = 3 * 3 * sum(t.numel() * t.element_size() for t in tensors) + (1 << 20)
        free = shutil.disk_usage(self.path).free
        if free < need:
            raise ConfigError(
                f"not enough free space in the run directory {self.path}: "
                f"{free / 2**20:.1f} MiB free, expected at least {need / 2**20:.1f} MiB for "
                "last.pt and best.pt"
            )


def non_finite_tensors(tree: Any, *, limit: int = 3, prefix: str = "") -> list[str]:
    """Names of (up to ``limit``) floating tensors in a nested dict/list holding NaN or inf.

    One host sync for the whole tree: the per-tensor checks are stacked first.
    """
    names: list[str] = []
    tensors: list[torch.Tensor] = []

    def walk(node: Any, name: str) -> None:
        if isinstance(node, torch.Tensor):
            if node.is_floating_point() or node.is_complex():
                names.append(name)
                tensors.append(torch.isfinite(node).all())
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{name}.{key}" if name else str(key))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{name}.{i}" if name else str(i))

    walk(tree, prefix)
    if not tensors:
        return []
    ok = torch.stack([t.to(tensors[0].device) for t in tensors]).tolist()
    bad = [name for name, good in zip(names, ok, strict=True) if not good]
    return bad[:limit] + ([f"{len(bad) - limit} more"] if len(bad) > limit else [])


# -- starting a run ----------------------------------------------------------------------------
def check_start(run: RunDir, resume: bool) -> None:
    """Refuse a new run into a directory that holds one, and a resume without ``last.pt``."""
    if not resume and run.last.exists():
        raise ConfigError(
            f"{run.path} already holds a run (last.pt); use --resume or another --out"
        )
    if resume and not run.last.exists():
        raise CheckpointError(f"cannot resume: {run.last} does not exist")


@contextlib.contextmanager
def owned(run: RunDir) -> Iterator[RunDir]:
    """Hold ``run``'s lock for the block on the main process (unless it is held already);
    when it cannot be had, every rank raises the same one-line error."""
    held = run.locked
    error: ConfigError | None = None
    if is_main_process() and not held:
        try:
            run.acquire()
        except ConfigError as err:
            error = err
    message = broadcast_object(None if error is None else str(error))
    if error is not None:
        raise error
    if message is not None:
        raise ConfigError(message)
    try:
        yield run
    finally:
        if not held:
            run.release()
