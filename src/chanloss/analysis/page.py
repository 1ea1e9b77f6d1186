"""The page of ``chanloss analyze``: ``report.html``, which shows the metrics table and the
figures (:mod:`chanloss.analysis.figures`) by relative paths."""

from __future__ import annotations

import html
import math
from typing import Any

from chanloss.analysis.collect import ATTENTION_GAP, RunData
from chanloss.core.html_style import REPORT_CSS

__all__ = ["render_page"]

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


def render_page(
    runs: list[RunData], rows: list[dict[str, Any]], figures: dict[str, Any], max_samples: int
) -> str:
    """``report.html``: the runs, the metrics table, the t-SNE and CC views, the gradient
    share (when recorded) and the MC view."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>chanloss analysis</title>",
        f"<style>{REPORT_CSS}</style></head><body>",
        "<h1>chanloss analysis</h1>",
        f"<ul>{_runs_list(runs)}</ul>",
        "<h2>Metrics</h2>",
        _metrics_table(rows),
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
        *_cc_section(runs, figures),
    ]
    if "grad_share" in figures:
        parts += [
            "<h2>Gradient share</h2>",
            _img(figures["grad_share"], "gradient share of each loss term"),
            "<p class='note'>Each term's gradient norm on the feature map (embedding, "
            "attention) over cross-entropy's, epoch means of the training run's "
            "metrics.csv (grad_share_every); 1 = as strong as cross-entropy.</p>",
        ]
    parts += _mc_section(runs, figures)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _runs_list(runs: list[RunData]) -> str:
    return "".join(
        f"<li><b>{html.escape(r.label)}</b>: <code>{html.escape(str(r.checkpoint))}</code>, "
        f"epoch {r.epoch}, losses {html.escape(' + '.join(r.losses))}, "
        f"{r.labels.shape[0]} test images, {r.num_channels} feature channels</li>"
        for r in runs
    )


def _metrics_table(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in _METRIC_HEAD)
    body = "".join(
        "<tr>" + "".join(_cell(k, row[k]) for k, _ in _METRIC_HEAD) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _cc_section(runs: list[RunData], figures: dict[str, Any]) -> list[str]:
    gap_note = ""
    if any(r.attention_source == ATTENTION_GAP for r in runs):
        gap_note = (
            "<p class='note'>Runs without CC-Loss have no attention module; their attention "
            "vector is the global average of the feature map divided per sample by its largest "
            "absolute value (in [0, 1] for post-ReLU features, like a sigmoid attention), so "
            "only the pattern over the channels is compared.</p>"
        )
    return [
        "<h2>CC view: channel attention</h2>",
        gap_note,
        _img(figures["cc"][0], "class x channel mean attention"),
        "<p class='note'>Rows: classes; columns: channels; colour: mean attention of the class's "
        "test images, on one scale for all runs.</p>",
        _img(figures["cc"][1], "class-class correlation of mean attention"),
        "<p class='note'>Pearson correlation over the channels between the classes' mean "
        "attention vectors: class-specific attention shows as a light off-diagonal.</p>",
    ]


def _mc_section(runs: list[RunData], figures: dict[str, Any]) -> list[str]:
    parts = ["<h2>MC view: channel groups</h2>"]
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
    return parts
