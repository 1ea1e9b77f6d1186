"""The gradient-share figure of ``chanloss analyze``: each loss term's gradient norm on the
feature map (and the embedding, the attention) relative to cross-entropy's, per epoch, from the
``gshare_*`` columns of each run's ``metrics.csv`` (``grad_share_every``, see
:mod:`chanloss.run.grad_share`)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["plot_grad_share", "read_grad_share"]

_TENSOR_NAMES = {"": "feature map", "_emb": "embedding", "_att": "attention"}


def read_grad_share(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """``column -> [(epoch, value), ...]`` of the ``gshare_*`` columns of a run's metrics.csv
    (empty when the file or the columns are missing)."""
    if not metrics_csv.is_file():
        return {}
    series: dict[str, list[tuple[int, float]]] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            for key, text in row.items():
                if key and key.startswith("gshare_") and text not in (None, ""):
                    value = float(text)
                    if math.isfinite(value):
                        series.setdefault(key, []).append((int(row["epoch"]), value))
    return series


def _tensor(column: str) -> tuple[str, str]:
    """``("cc", "attention")`` for ``gshare_cc_att``."""
    name = column.removeprefix("gshare_")
    for suffix in ("_emb", "_att"):
        if name.endswith(suffix):
            return name.removesuffix(suffix), _TENSOR_NAMES[suffix]
    return name, _TENSOR_NAMES[""]


def plot_grad_share(path: Path, runs: Sequence[tuple[str, Path]]) -> bool:
    """Write the figure for ``runs`` (``(label, metrics.csv)``) to ``path``; ``False`` (and no
    file) when no run recorded a gradient share."""
    data = [(label, read_grad_share(csv_path)) for label, csv_path in runs]
    data = [(label, series) for label, series in data if series]
    if not data:
        return False
    from chanloss.analysis.plots import plt, save_figure

    tensors = [  # a tensor no term reaches (CC-Loss and the embedding) gets no panel
        t
        for t in _TENSOR_NAMES.values()
        if any(
            _tensor(c)[1] == t and any(v > 0 for _, v in points)
            for _, series in data
            for c, points in series.items()
        )
    ]
    fig, axes = plt.subplots(1, len(tensors), figsize=(4.2 * len(tensors), 3.4), squeeze=False)
    for ax, tensor in zip(axes[0], tensors, strict=True):
        for label, series in data:
            for column, points in series.items():
                term, on = _tensor(column)
                positive = [(e, v) for e, v in points if v > 0]
                if on != tensor or not positive:
                    continue
                epochs, values = zip(*positive, strict=True)
                ax.plot(epochs, values, marker="o", ms=3, label=f"{label}: {term}")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"on the {tensor}", fontsize=10)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("gradient norm / cross-entropy's")
    fig.suptitle("Gradient share of each loss term (epoch means)", fontsize=11)
    save_figure(fig, path)
    return True
