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
import html
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from chanloss.analysis.collect import ATTENTION_GAP, RunData, collect, load_trainer
from chanloss.analysis.grad_share import plot_grad_share
from chanloss.analysis.metrics import separability
from chanloss.analysis.plots import finite_range, plot_channel_maps, plot_heatmaps, plot_tsne
from chanloss.analysis.views import class_correlation, class_means
from chanloss.core.html_style import REPORT_CSS
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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "run"


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
        trainer, state = load_trainer(path, device=device)
        stage(f"{where}: test pass over {len(trainer.data.test)} images")
        run = collect(
            trainer, label=label, checkpoint=path, epoch=int(state["epoch"]), images=images
        )
        del trainer, state
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
    figures = _figures(out, runs, tsne, samples)
    stage("report")
    _write_csv(out / "metrics.csv", rows)
    with atomic_open(out / "report.html") as f:
        f.write(_html(runs, rows, figures, max_samples))
    stage(f"done: {out / 'report.html'}")
    return rows


def _figures(
    out: Path, runs: list[RunData], tsne: list[np.ndarray], samples: list[torch.Tensor]
) -> dict[str, Any]:
    titles = [f"{r.label} ({'+'.join(r.losses)})" for r in runs]
    names = [r.class_names for r in runs]
    figures: dict[str, Any] = {"maps": {}}

    plot_tsne(
        out / "tsne.png",
        tsne,
        [r.labels[i].numpy() for r, i in zip(runs, samples, strict=True)],
        titles,
        class_names=max(names, key=len),
    )
    figures["tsne"] = "tsne.png"

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
    figures["cc"] = ["cc_class_channel.png", "cc_class_correlation.png"]
    runs_csv = [(r.label, r.checkpoint.parent / "metrics.csv") for r in runs]
    if plot_grad_share(out / "grad_share.png", runs_csv):
        figures["grad_share"] = "grad_share.png"

    mc_runs = [r for r in runs if r.group_scores is not None]
    if mc_runs:
        groups = []
        for r in mc_runs:
            m = class_means(r.group_scores, r.labels, r.num_classes)
            top = m.abs().amax(1, keepdim=True)
            groups.append((m / torch.where(top > 0, top, torch.ones_like(top))).numpy())
        low, _ = finite_range(groups, floor=0.0)
        plot_heatmaps(
            out / "mc_class_group.png",
            groups,
            [f"{r.label} ({'+'.join(r.losses)})" for r in mc_runs],
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
        figures["mc"] = "mc_class_group.png"
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
                title=f"{r.label} ({'+'.join(r.losses)}): true class's channel group",
            )
            figures["maps"][r.label] = name
    return figures


# -- HTML ----------------------------------------------------------------------------------------

_METRIC_HEAD = [
    ("label", "run"),
    ("losses", "losses"),
    ("epoch", "epoch"),
    ("top1", "top-1"),
    ("embedding_ratio", "emb. intra/inter"),
    ("embedding_silhouette", "emb. silhouette"),
    ("embedding_fisher", "emb. Fisher"),
    ("attention_ratio", "att. intra/inter"),
    ("attention_silhouette", "att. silhouette"),
    ("attention_fisher", "att. Fisher"),
    ("group_top1", "group top-1"),
    ("group_diversity", "group div."),
    ("attention_source", "attention"),
]


def _cell(key: str, value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            text = "&ndash;"
        elif key in ("top1", "group_top1"):
            text = f"{100 * value:.2f}%"
        else:
            text = f"{value:.4g}"
        return f"<td>{text}</td>"
    return f'<td class="l">{html.escape(str(value))}</td>'


def _img(src: str, alt: str) -> str:
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}">'


def _html(
    runs: list[RunData], rows: list[dict[str, Any]], figures: dict[str, Any], max_samples: int
) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in _METRIC_HEAD)
    body = "".join(
        "<tr>" + "".join(_cell(k, row[k]) for k, _ in _METRIC_HEAD) + "</tr>" for row in rows
    )
    runs_list = "".join(
        f"<li><b>{html.escape(r.label)}</b>: <code>{html.escape(str(r.checkpoint))}</code>, "
        f"epoch {r.epoch}, losses {html.escape(' + '.join(r.losses))}, "
        f"{r.labels.shape[0]} test images, {r.num_channels} feature channels</li>"
        for r in runs
    )
    gap_note = ""
    if any(r.attention_source == ATTENTION_GAP for r in runs):
        gap_note = (
            "<p class='note'>Runs without CC-Loss have no attention module; their attention "
            "vector is the global average of the feature map divided per sample by its largest "
            "absolute value (in [0, 1] for post-ReLU features, like a sigmoid attention), so "
            "only the pattern over the channels is compared.</p>"
        )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>chanloss analysis</title>",
        f"<style>{REPORT_CSS}</style></head><body>",
        "<h1>chanloss analysis</h1>",
        f"<ul>{runs_list}</ul>",
        "<h2>Metrics</h2>",
        f"<table><tr>{head}</tr>{body}</table>",
        "<p class='note'>Top-1, group top-1 and group diversity use the whole test split; the "
        f"separability metrics and t-SNE use up to {max_samples} test samples (the same ones "
        "for runs on the same split). <b>intra/inter</b>: mean Euclidean distance between "
        "same-class pairs over that between different-class pairs (lower is better, 1 = no "
        "class structure). <b>silhouette</b>: scikit-learn's mean silhouette in [-1, 1] "
        "(higher is better). <b>Fisher</b>: tr(S<sub>B</sub>) / tr(S<sub>W</sub>) of the "
        "between- and within-class scatter matrices (higher is better). <b>group top-1</b>: "
        "share of test images whose largest MC group score (cross-channel max pooling + GAP) "
        "is their own class's group; <b>group div.</b>: mean MC diversity 1 - S/size of the true "
        "class's group (lower = its channels peak at different places). "
        "Raw numbers: <a href='metrics.csv'>metrics.csv</a>.</p>",
        "<h2>Embeddings: t-SNE</h2>",
        _img(figures["tsne"], "t-SNE of the embeddings"),
        "<h2>CC view: channel attention</h2>",
        gap_note,
        _img(figures["cc"][0], "class x channel mean attention"),
        "<p class='note'>Rows: classes; columns: channels; colour: mean attention of the class's "
        "test images, on one scale for all runs.</p>",
        _img(figures["cc"][1], "class-class correlation of mean attention"),
        "<p class='note'>Pearson correlation over the channels between the classes' mean "
        "attention vectors: class-specific attention shows as a light off-diagonal.</p>",
    ]
    if "grad_share" in figures:
        parts += [
            "<h2>Gradient share</h2>",
            _img(figures["grad_share"], "gradient share of each loss term"),
            "<p class='note'>Each term's gradient norm on the feature map (embedding, "
            "attention) over cross-entropy's, epoch means of the training run's "
            "metrics.csv (grad_share_every); 1 = as strong as cross-entropy.</p>",
        ]
    parts.append("<h2>MC view: channel groups</h2>")
    if "mc" in figures:
        parts += [
            "<p class='note'>Channels are split into one group of consecutive channels per class "
            "as MC-Loss defines it, for every run with at least as many channels as classes. "
            "After MC-Loss training the matrix should be diagonal-dominant.</p>",
            _img(figures["mc"], "class x group mean activation"),
        ]
        cells = "".join(
            f"<figure>{_img(src, f'channel maps of {label}')}<figcaption>{html.escape(label)}"
            "</figcaption></figure>"
            for label, src in figures["maps"].items()
        )
        parts += [
            "<p class='note'>Example test images with the maps of their true class's channels "
            "(upsampled, each image's maps divided by their common maximum, scale [0, 1] for all "
            "runs); <i>div</i> is the image's diversity value for that group.</p>",
            f"<div class='row'>{cells}</div>",
        ]
    missing = [r.label for r in runs if r.group_scores is None]
    if missing:
        parts.append(
            "<p class='note'>No MC view for "
            + ", ".join(html.escape(m) for m in missing)
            + ": fewer feature channels than classes.</p>"
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)
