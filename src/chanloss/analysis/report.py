"""``chanloss analyze``: separability metrics, CC/MC views and t-SNE of trained checkpoints.

:func:`analyze` writes into ``out_dir``: ``metrics.csv`` (one row per checkpoint), the PNG
figures and ``report.html``, which refers to the PNGs and the CSV by relative paths. The
images are not embedded as base64: the PNGs are written anyway (for slides and papers), so
embedding would store every figure twice and make the HTML several times larger and
unreadable as text; the output directory as a whole is self-contained (copy or zip the
folder, every link stays valid).
"""

from __future__ import annotations

import csv
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chanloss.analysis.collect import RunData, collect, load_evaluator
from chanloss.analysis.figures import write_figures
from chanloss.analysis.metrics import separability
from chanloss.analysis.page import render_page
from chanloss.run.run_dir import atomic_open

__all__ = ["METRIC_COLUMNS", "analyze", "remove_earlier_outputs", "run_labels", "subsample"]

METRIC_COLUMNS = (
    "label",
    "checkpoint",
    "epoch",
    "losses",
    "attention_source",
    "test_samples",
    "analysed_samples",
    "top1",
    "embedding_ratio",
    "embedding_silhouette",
    "embedding_fisher",
    "attention_ratio",
    "attention_silhouette",
    "attention_fisher",
    "group_top1",
    "group_diversity",
)

_SEED = 0


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def subsample(n: int, max_samples: int, *, seed: int = _SEED) -> torch.Tensor:
    """Sorted indices of ``min(n, max_samples)`` of ``n`` samples, drawn without replacement.

    The draw depends only on ``n``, ``max_samples`` and ``seed``: runs evaluated on the same test
    split are compared on the same samples.
    """
    if n <= max_samples:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:max_samples].sort().values


def run_labels(checkpoints: Sequence[Path]) -> list[str]:
    """Short unique names of the runs: the config name, from the run directory.

    ``chanloss compare`` keeps runs in ``OUT/<config name>/seed<S>/`` and ``chanloss train``
    in ``runs/<config name>-<date>-<time>/`` by default, so the name is the directory above a
    ``seed<S>`` directory, or the run directory without a date suffix. Where names repeat,
    the seed, the run directory as it is, the directory above and the checkpoint file are
    added (each only when it tells the runs apart), then a number.
    """
    dirs = [p.absolute().parent for p in checkpoints]
    seeded = [_SEED_DIR.fullmatch(d.name) is not None for d in dirs]
    homes = [d.parent if s else d for d, s in zip(dirs, seeded, strict=True)]
    labels = [_DATE_SUFFIX.sub("", h.name) or h.name or "run" for h in homes]
    steps = [
        lambda i, label: f"{label}/{dirs[i].name}" if seeded[i] else label,
        lambda i, label: label.replace(_DATE_SUFFIX.sub("", homes[i].name), homes[i].name, 1),
        lambda i, label: f"{homes[i].parent.name}/{label}" if homes[i].parent.name else label,
        lambda i, label: f"{label}/{Path(checkpoints[i]).stem}",
    ]
    for step in steps:
        if len(set(labels)) == len(labels):
            break
        repeated = {x for x in labels if labels.count(x) > 1}
        tried = [step(i, x) if x in repeated else x for i, x in enumerate(labels)]
        if len(set(tried)) > len(set(labels)):
            labels = tried
    if len(set(labels)) < len(labels):
        labels = [f"{label}#{i}" for i, label in enumerate(labels, start=1)]
    return labels


_SEED_DIR = re.compile(r"seed\d+")
_DATE_SUFFIX = re.compile(r"-\d{8}-\d{6}$")
#: What analyze writes into its output directory; earlier files of these names are removed.
_OUTPUT_NAMES = (
    "report.html",
    "metrics.csv",
    "grad_share.png",
    "tsne.png",
    "cc_class_channel.png",
    "cc_class_correlation.png",
    "mc_class_group.png",
)
_OUTPUT_PATTERN = re.compile(r"mc_channel_maps_\d+_[A-Za-z0-9_.-]+\.png")


def remove_earlier_outputs(out: Path) -> list[str]:
    """Delete the files an earlier ``analyze`` wrote into ``out`` (only those names: the report,
    the CSV and the figures, never other files or folders); returns the names removed."""
    removed = []
    for path in sorted(out.iterdir()):
        ours = path.name in _OUTPUT_NAMES or _OUTPUT_PATTERN.fullmatch(path.name)
        if ours and path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path.name)
    return removed


def _tsne(points: np.ndarray) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = points.shape[0]
    if n < 3:
        return np.zeros((n, 2))
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3.0)))
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        random_state=_SEED,
    )
    return tsne.fit_transform(points.astype(np.float64))


def _metrics_row(run: RunData, idx: torch.Tensor) -> dict[str, Any]:
    y = run.labels[idx]
    emb = separability(run.embeddings[idx], y)
    att = separability(run.attention[idx], y)
    row: dict[str, Any] = {
        "label": run.label,
        "checkpoint": str(run.checkpoint),
        "epoch": run.epoch,
        "losses": "+".join(run.losses),
        "attention_source": run.attention_source,
        "test_samples": int(run.labels.shape[0]),
        "analysed_samples": int(idx.shape[0]),
        "top1": run.accuracy,
        **{f"embedding_{k}": v for k, v in emb.items()},
        **{f"attention_{k}": v for k, v in att.items()},
        "group_top1": math.nan,
        "group_diversity": math.nan,
    }
    if run.group_scores is not None and run.diversity is not None:
        row["group_top1"] = float((run.group_scores.argmax(1) == run.labels).double().mean())
        true_group = run.diversity.gather(1, run.labels[:, None]).squeeze(1)
        row["group_diversity"] = float(true_group.double().mean())
    return row


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_open(path) as f:
        writer = csv.DictWriter(f, fieldnames=list(METRIC_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row[k]) for k in METRIC_COLUMNS})


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def analyze(
    checkpoints: Sequence[str | Path],
    out_dir: str | Path,
    *,
    max_samples: int = 1000,
    images: int = 4,
    device: str = "auto",
    progress: bool = True,
    labels: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Analyse checkpoints side by side; write ``report.html``, ``metrics.csv`` and PNGs.

    For each checkpoint the run (model, losses, data) is rebuilt from its stored config and
    evaluated on its test split: top-1 accuracy on the whole split; the separability metrics
    (:mod:`chanloss.analysis.metrics`) of the embeddings and channel-attention vectors and the
    t-SNE map on ``min(N, max_samples)`` test samples (the same ones for runs on the same
    split); the CC view (class x channel attention, class-class correlation), and the MC view
    (class x group activation, the true group's channel maps of ``images`` examples) for runs
    with at least as many feature channels as classes. Returns the metric rows.

    ``labels`` name the runs (default :func:`run_labels`). ``progress`` prints a line as each
    stage starts. The files of an earlier analysis in ``out_dir`` are removed once the runs
    are collected (:func:`remove_earlier_outputs`), so it holds only this analysis.
    """
    from chanloss.run.loader import resolve_checkpoint

    if not checkpoints:
        raise ValueError("analyze needs at least one checkpoint, got none")
    max_samples = _check_int("max_samples", max_samples, 3)
    images = _check_int("images", images, 1)
    paths = [resolve_checkpoint(p) for p in checkpoints]  # a run directory: its best.pt
    if labels is None:
        labels = run_labels(paths)
    else:
        labels = [str(label) for label in labels]
        if len(labels) != len(paths):
            raise ValueError(f"expected one label per checkpoint ({len(paths)}), got {len(labels)}")
        if len(set(labels)) < len(labels) or not all(labels):
            raise ValueError(f"labels must be unique and non-empty, got {labels}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def stage(text: str) -> None:
        if progress:
            print(f"analyze [{time.perf_counter() - start:5.1f}s] {text}", flush=True)

    runs: list[RunData] = []
    rows: list[dict[str, Any]] = []
    tsne: list[np.ndarray] = []
    samples: list[torch.Tensor] = []
    for i, (path, label) in enumerate(zip(paths, labels, strict=True), start=1):
        where = f"{label} ({i}/{len(paths)})"
        stage(f"{where}: loading {path}")
        evaluator, state = load_evaluator(path, device=device)
        stage(f"{where}: test pass over {len(evaluator.data.test)} images")
        run = collect(
            evaluator, label=label, checkpoint=path, epoch=int(state["epoch"]), images=images
        )
        del evaluator, state
        idx = subsample(run.labels.shape[0], max_samples)
        stage(f"{where}: separability metrics on {idx.shape[0]} samples")
        rows.append(_metrics_row(run, idx))
        stage(f"{where}: t-SNE of {idx.shape[0]} embeddings")
        tsne.append(_tsne(run.embeddings[idx].numpy()))
        samples.append(idx)
        runs.append(run)

    removed = remove_earlier_outputs(out)
    if removed:
        stage(f"removed {len(removed)} files of an earlier analysis from {out}")
    stage("figures")
    figures = write_figures(out, runs, tsne, samples)
    stage("report")
    _write_csv(out / "metrics.csv", rows)
    with atomic_open(out / "report.html") as f:
        f.write(render_page(runs, rows, figures, max_samples))
    stage(f"done: {out / 'report.html'}")
    return rows
