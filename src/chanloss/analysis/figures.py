"""The PNG figures of ``chanloss analyze``: the t-SNE map, the CC view (class x channel
attention, class-class correlation), the gradient share and the MC view (class x group
activation, the true group's channel maps of example images). :func:`write_figures` returns
the file names for the report page (:mod:`chanloss.analysis.page`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from chanloss.analysis.collect import RunData
from chanloss.analysis.grad_share import plot_grad_share
from chanloss.analysis.plots import finite_range, plot_channel_maps, plot_heatmaps, plot_tsne
from chanloss.analysis.views import class_correlation, class_means

__all__ = ["write_figures"]


def write_figures(
    out: Path, runs: list[RunData], tsne: list[np.ndarray], samples: list[torch.Tensor]
) -> dict[str, Any]:
    """Write every figure into ``out``; ``{"tsne", "cc", "grad_share"?, "mc"?, "maps"}``:
    the file names (``maps``: run label -> its channel-map figure)."""
    titles = [_title(r) for r in runs]
    figures: dict[str, Any] = {"maps": {}}
    plot_tsne(
        out / "tsne.png",
        tsne,
        [r.labels[i].numpy() for r, i in zip(runs, samples, strict=True)],
        titles,
        class_names=max((r.class_names for r in runs), key=len),
    )
    figures["tsne"] = "tsne.png"
    figures["cc"] = _cc_figures(out, runs, titles)
    runs_csv = [(r.label, r.checkpoint.parent / "metrics.csv") for r in runs]
    if plot_grad_share(out / "grad_share.png", runs_csv):
        figures["grad_share"] = "grad_share.png"
    if any(r.group_scores is not None for r in runs):
        figures["mc"] = _mc_figure(out, runs)
        figures["maps"] = _channel_maps(out, runs)
    return figures


def _title(run: RunData) -> str:
    return f"{run.label} ({'+'.join(run.losses)})"


def _cc_figures(out: Path, runs: list[RunData], titles: list[str]) -> list[str]:
    """Class x channel mean attention (one scale for all runs) and the class-class
    correlation of those mean attention vectors."""
    names = [r.class_names for r in runs]
    att = [class_means(r.attention, r.labels, r.num_classes).numpy() for r in runs]
    low, high = finite_range(att)
    plot_heatmaps(
        out / "cc_class_channel.png",
        att,
        titles,
        class_names=names,
        vmin=low,
        vmax=high,
        cmap="viridis",
        xlabel="channel",
        colorbar="mean attention",
        title="Mean channel attention per class (shared scale)",
    )
    corr = [class_correlation(torch.from_numpy(a)).numpy() for a in att]
    plot_heatmaps(
        out / "cc_class_correlation.png",
        corr,
        titles,
        class_names=names,
        vmin=-1.0,
        vmax=1.0,
        cmap="RdBu_r",
        xlabel="class",
        colorbar="Pearson correlation over channels",
        title="Class-class correlation of the mean attention vectors",
        square=True,
        x_classes=True,
    )
    return ["cc_class_channel.png", "cc_class_correlation.png"]


def _mc_figure(out: Path, runs: list[RunData]) -> str:
    """Class x group mean activation of the runs with an MC view, each row over its max."""
    mc_runs = [r for r in runs if r.group_scores is not None]
    groups = []
    for r in mc_runs:
        m = class_means(r.group_scores, r.labels, r.num_classes)
        top = m.abs().amax(1, keepdim=True)
        groups.append((m / torch.where(top > 0, top, torch.ones_like(top))).numpy())
    low, _ = finite_range(groups, floor=0.0)
    plot_heatmaps(
        out / "mc_class_group.png",
        groups,
        [_title(r) for r in mc_runs],
        class_names=[r.class_names for r in mc_runs],
        vmin=low,
        vmax=1.0,
        cmap="magma",
        xlabel="channel group",
        colorbar="mean group score / row max",
        title="Class x group mean activation (CCMP + GAP), each row divided by its maximum",
        square=True,
        x_classes=True,
    )
    return "mc_class_group.png"


def _channel_maps(out: Path, runs: list[RunData]) -> dict[str, str]:
    """The true class group's channel maps of each run's example images; label -> file."""
    written = {}
    for i, r in enumerate(runs, start=1):
        if r.group_scores is None or r.example_images is None or not r.example_maps:
            continue
        size = r.example_images.shape[-2:]
        maps = [
            F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0]
            .clamp(0.0, 1.0)
            .numpy()
            for m in r.example_maps
        ]
        ex_labels = r.labels[r.examples]
        div = r.diversity[r.examples, ex_labels]
        name = f"mc_channel_maps_{i}_{_slug(r.label)}.png"
        plot_channel_maps(
            out / name,
            r.example_images.numpy(),
            maps,
            ex_labels.tolist(),
            div.tolist(),
            class_names=r.class_names,
            title=f"{_title(r)}: true class's channel group",
        )
        written[r.label] = name
    return written


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "run"
