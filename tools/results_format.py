"""What every section of the results page shares: the machine line, links, number formats,
the data-set order and the names of the losses the verdicts are about."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from chanloss.core.text import pct as _pct

DATASET_ORDER = ("digits", "mnist5k", "finegrained", "cifar10", "cifar100", "cub200")
CHANNEL_LOSSES = {"cc": "CC-Loss", "mc": "MC-Loss"}
#: Rows compared with CE in the verdicts: the channel losses, and the losses of the
#: ``defaults-*`` parts (trained at the defaults that changed after the other parts).
VERDICT_LOSSES = {
    **CHANNEL_LOSSES,
    "cc_default": "CC-Loss (margin form, side branch: the defaults before the gate)",
    "center_default": "centre loss (published centre update, defaults)",
}


def pct(mean: float, std: float) -> str:
    """``81.25 ± 1.50`` (fractions in percent); ``n/a`` for a NaN mean."""
    return _pct(mean, std, unit="", missing="n/a")


def machine_line(meta: dict[str, Any] | None) -> str:
    """``AMD EPYC (2 cores, 1 thread), torch 2.x, commit abc1234``."""
    if not meta:
        return "unknown machine"
    where = meta.get("gpu") or meta.get("cpu_model") or meta.get("cpu") or "unknown CPU"
    cores = meta.get("cpu_count")
    threads = meta.get("torch_threads", meta.get("threads"))
    bits = [
        f"{cores} cores" if cores else None,
        f"{threads} torch thread{'s' if threads != 1 else ''}" if threads else None,
    ]
    inner = ", ".join(b for b in bits if b)
    git = meta.get("git") or {}
    commit = (git.get("commit") or "unknown")[:10]
    dirty = " + uncommitted changes" if git.get("dirty") else ""
    return f"{where}{f' ({inner})' if inner else ''}, torch {meta.get('torch', '?')}, commit `{commit}`{dirty}"


def link(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def grid_text(grids: dict[str, dict[str, list[Any]]]) -> str:
    """``cc: weight {1, 0.1} x reduction {16}; mc: ...``."""
    return "; ".join(
        f"{CHANNEL_LOSSES.get(name, name)} "
        + " x ".join(f"{k} {{{', '.join(fmt_param(v) for v in vs)}}}" for k, vs in spec.items())
        for name, spec in grids.items()
    )


def fmt_param(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def column_order(dataset: str) -> int:
    """Known data sets in ``DATASET_ORDER``, others after them."""
    return DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER)
