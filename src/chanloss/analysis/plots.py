"""The figures of the analysis report (matplotlib, Agg backend).

Every multi-run figure puts the runs side by side in one image with one colour bar, so the
runs share a colour scale by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402

from chanloss.run.run_dir import write_png  # noqa: E402

__all__ = [
    "class_colours",
    "finite_range",
    "plot_channel_maps",
    "plot_heatmaps",
    "plot_tsne",
]

_DPI = 100


def save_figure(fig: Any, path: str | Path, dpi: int = _DPI) -> None:
    """Write ``fig`` as a PNG through a temporary file (``path`` is old or new, never half) and
    close it."""
    try:
        write_png(fig, path, dpi)
    finally:
        plt.close(fig)


_TICK_LIMIT = 20  # label every class on an axis up to this many classes


def class_colours(num_classes: int) -> ListedColormap:
    """A discrete colour per class (tab10 / tab20, else sampled from turbo)."""
    if num_classes <= 10:
        colours = plt.get_cmap("tab10").colors[:num_classes]
    elif num_classes <= 20:
        colours = plt.get_cmap("tab20").colors[:num_classes]
    else:
        colours = plt.get_cmap("turbo")(np.linspace(0.0, 1.0, num_classes))
    return ListedColormap(colours)


def _class_ticks(ax: plt.Axes, names: Sequence[str], axis: str) -> None:
    if len(names) > _TICK_LIMIT:
        return
    if axis in ("y", "both"):
        ax.set_yticks(range(len(names)), names, fontsize=7)
    if axis in ("x", "both"):
        ax.set_xticks(range(len(names)), names, fontsize=7, rotation=90)


def plot_heatmaps(
    path: Path,
    matrices: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    class_names: Sequence[Sequence[str]],
    vmin: float,
    vmax: float,
    cmap: str,
    xlabel: str,
    ylabel: str = "class",
    colorbar: str,
    title: str,
    square: bool = False,
    x_classes: bool = False,
) -> None:
    """One heatmap per run, side by side, one colour scale ``[vmin, vmax]`` and colour bar.

    NaN cells (a class without test samples, an undefined correlation) are drawn grey.
    """
    n = len(matrices)
    fig, axes = plt.subplots(
        1, n, figsize=(0.6 + 4.2 * n, 4.4), squeeze=False, layout="constrained"
    )
    colour_map = plt.get_cmap(cmap).with_extremes(bad="0.8")
    image = None
    for ax, matrix, name, names in zip(axes[0], matrices, titles, class_names, strict=True):
        image = ax.imshow(
            np.ma.masked_invalid(matrix),
            cmap=colour_map,
            vmin=vmin,
            vmax=vmax,
            aspect="equal" if square else "auto",
            interpolation="nearest",
        )
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        _class_ticks(ax, names, "both" if x_classes else "y")
    assert image is not None
    fig.colorbar(image, ax=list(axes[0]), label=colorbar, shrink=0.9)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_tsne(
    path: Path,
    points: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    class_names: Sequence[str],
) -> None:
    """2-D t-SNE maps side by side, coloured by class with the same class colours."""
    n = len(points)
    k = len(class_names)
    cmap = class_colours(k)
    norm = BoundaryNorm(np.arange(k + 1) - 0.5, k)
    fig, axes = plt.subplots(
        1, n, figsize=(0.6 + 4.2 * n, 4.4), squeeze=False, layout="constrained"
    )
    scatter = None
    for ax, xy, y, name in zip(axes[0], points, labels, titles, strict=True):
        scatter = ax.scatter(xy[:, 0], xy[:, 1], c=y, cmap=cmap, norm=norm, s=6, linewidths=0)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    assert scatter is not None
    bar = fig.colorbar(scatter, ax=list(axes[0]), ticks=range(k), shrink=0.9, label="class")
    if k <= _TICK_LIMIT:
        bar.ax.set_yticklabels(class_names, fontsize=7)
    fig.suptitle("t-SNE of the test embeddings (coloured by true class)")
    save_figure(fig, path)


def _show_image(ax: plt.Axes, img: np.ndarray) -> None:
    """An ``(H, W, C)`` image in ``[0, 1]``: RGB as is, anything else as its grey mean."""
    if img.shape[-1] == 3:
        ax.imshow(img, interpolation="bilinear")
    else:
        ax.imshow(img.mean(-1), cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear")


def plot_channel_maps(
    path: Path,
    images: np.ndarray,
    maps: Sequence[np.ndarray],
    labels: Sequence[int],
    diversity: Sequence[float],
    *,
    class_names: Sequence[str],
    title: str,
    max_channels: int = 8,
) -> None:
    """For each example image: the image, then its true class's group maps overlaid on it.

    ``images`` ``(n, C, H, W)`` in ``[0, 1]``; ``maps[i]`` ``(size, H, W)`` in ``[0, 1]``
    (already upsampled to the image); the colour scale is ``[0, 1]`` for every run. At most
    ``max_channels`` maps per group are drawn.
    """
    n = len(maps)
    cols = 1 + min(max_channels, max((m.shape[0] for m in maps), default=1))
    fig, axes = plt.subplots(
        n, cols, figsize=(1.5 * cols + 0.8, 1.6 * n + 0.6), squeeze=False, layout="constrained"
    )
    overlay = None
    for i in range(n):
        img = np.clip(np.moveaxis(images[i], 0, -1), 0.0, 1.0)
        y = int(labels[i])
        _show_image(axes[i, 0], img)
        axes[i, 0].set_title(f"class {class_names[y]}", fontsize=9)
        axes[i, 0].set_ylabel(f"div {diversity[i]:.3f}", fontsize=9)
        for j in range(1, cols):
            ax = axes[i, j]
            if j - 1 < maps[i].shape[0]:
                _show_image(ax, img)
                overlay = ax.imshow(maps[i][j - 1], cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
                ax.set_title(f"group {y} ch {j}", fontsize=8)
            else:
                ax.axis("off")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    if overlay is not None:
        fig.colorbar(overlay, ax=axes[:, 1:].ravel().tolist(), shrink=0.8, label="map / group max")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def finite_range(
    arrays: Sequence[np.ndarray], *, floor: float | None = None
) -> tuple[float, float]:
    """``(min, max)`` over the finite entries of all arrays (``(0, 1)`` if there are none)."""
    values = [a[np.isfinite(a)] for a in arrays]
    values = [v for v in values if v.size]
    if not values:
        return 0.0, 1.0
    low = float(min(v.min() for v in values))
    high = float(max(v.max() for v in values))
    if floor is not None:
        low = min(low, floor)
    if math.isclose(low, high):
        low, high = low - 0.5, high + 0.5
    return low, high
