"""Where a data set's files lie under ``root``, and its whitespace-separated index tables
(``<image_id> <path>`` lines, as CUB-200-2011 ships them)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from chanloss.data.base import DatasetError, DatasetFileNotFoundError


def need_root(root: str | os.PathLike | None, name: str, layout: str) -> Path:
    if root is None:
        raise ValueError(f"dataset {name!r} needs root=<directory holding {layout}>, got None")
    given = Path(root).expanduser()
    path = given.absolute()  # later messages name the folders in full
    if not path.is_dir():
        where = (
            ""
            if given.is_absolute()
            else f"; a relative root is taken from the current directory, {Path.cwd()}, "
            f"which gives {path}"
        )
        raise DatasetFileNotFoundError(
            f"{name}: root {str(given)!r} is not a directory ({layout}){where}"
        )
    return path


def find_base(root: Path, folder: str, marker: str, name: str) -> Path:
    """``root/folder`` if it exists, else ``root`` itself if it holds ``marker``."""
    if (root / folder).is_dir():
        return root / folder
    if (root / marker).exists():
        return root
    raise DatasetFileNotFoundError(
        f"{name}: {root / folder / marker} not found (root may point at the directory holding "
        f"{folder}/ or at {folder}/ itself)"
    )


def read_table(
    path: Path, fields: str, parse: Callable[[list[str]], tuple], name: str
) -> list[tuple]:
    """Parse a whitespace-separated index file, one record per non-blank line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise DatasetFileNotFoundError(
            f"{name}: {path}: file not found (expected lines '{fields}')"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{name}: {path}: cannot read: {exc}") from exc
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(parse(line.split(maxsplit=len(fields.split()) - 1)))
        except (ValueError, IndexError):
            raise DatasetError(
                f"{name}: {path}: line {number}: expected '{fields}', got {line!r}"
            ) from None
    if not rows:
        raise DatasetError(f"{name}: {path}: no records (expected lines '{fields}')")
    return rows


def int_pair(parts: list[str], allowed: tuple[int, ...] | None = None) -> tuple[int, int]:
    if len(parts) != 2:
        raise ValueError
    a, b = int(parts[0]), int(parts[1])
    if allowed is not None and b not in allowed:
        raise ValueError
    return a, b


def id_text(parts: list[str]) -> tuple[int, str]:
    if len(parts) != 2:
        raise ValueError
    return int(parts[0]), parts[1].strip()


def as_map(rows: list[tuple], path: Path, name: str) -> dict:
    table: dict = {}
    for key, value in rows:
        if key in table:
            raise DatasetError(f"{name}: {path}: id {key} appears twice")
        table[key] = value
    return table
