"""Atomic files: every file is written to a temporary ``.NAME.<random>.tmp`` next to it and
renamed over it, so a reader (or a run killed mid-write) sees the old or the new file, never half
of one. Files are created with mode ``0o666`` filtered by the umask, like any other program's.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_copy",
    "atomic_open",
    "finite_json",
    "json_text",
    "open_temp",
    "write_json",
    "write_png",
    "write_text",
]


def open_temp(path: Path) -> tuple[int, Path]:
    """Create ``.NAME.<random>.tmp`` next to ``path`` for writing; ``(fd, temp path)``.

    The file is created with mode ``0o666`` and the kernel applies the umask (unlike
    ``tempfile.mkstemp``, which always creates ``0o600``).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``path`` when the block ends normally.

    ``mode`` is ``"w"`` (text, ``newline=""``) or ``"wb"``. On an exception the temporary file
    is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = open_temp(path)
    try:
        text = "b" not in mode
        with os.fdopen(fd, mode, **({"newline": "", "encoding": "utf-8"} if text else {})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary file (``dst`` is old or new, never half)."""
    with atomic_open(dst, "wb") as out, open(src, "rb") as f:
        shutil.copyfileobj(f, out, 1 << 20)


def write_png(fig: Any, path: str | Path, dpi: int = 100) -> None:
    """Save a matplotlib figure as a PNG, atomically."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)


def finite_json(data: Any) -> Any:
    """``data`` with every NaN or infinite float (in nested dicts, lists and tuples) replaced
    by ``None``: JSON has no NaN or Infinity, and strict readers (jq, a browser's
    ``JSON.parse``) reject a file that holds them."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(value) for value in data]
    return data


def json_text(
    data: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None
) -> str:
    """Strict JSON text of ``data`` (NaN and infinities written as ``null``, see
    :func:`finite_json`), ending with a newline when indented. ``default`` converts objects
    JSON has no type for; what it returns is made finite too."""

    def convert(value: Any) -> Any:
        if default is None:
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
        return finite_json(default(value))

    text = json.dumps(finite_json(data), indent=indent, allow_nan=False, default=convert)
    return text + "\n" if indent is not None else text


def write_json(path: str | Path, data: Any, *, default: Callable[[Any], Any] | None = None) -> None:
    """Write ``data`` as indented strict JSON (:func:`json_text`), atomically."""
    text = json_text(data, default=default)
    with atomic_open(path) as f:
        f.write(text)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8), atomically."""
    with atomic_open(path) as f:
        f.write(text)
