"""``chanloss eval``: top-1/top-5, per-class accuracy and the confusion matrix of a checkpoint.

Each split gets its own folder (``<run dir>/eval-<checkpoint name>/<split>/``), and the
terminal shows the worst classes and the most confused pairs beside the overall accuracy.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from chanloss.core.atomic import atomic_open, write_json, write_png
from chanloss.core.errors import ConfigError
from chanloss.run.loader import load_for_eval, resolve_checkpoint

if TYPE_CHECKING:
    from chanloss.run.evaluator import Evaluator


def evaluate_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    *,
    split: str = "test",
    device: str = "auto",
    verbose: int = 1,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on a split and write ``eval.json``, per-class and confusion files.

    The model and losses are rebuilt from the config stored in the checkpoint; a margin head's
    or L-GM's scores replace the model's classifier, as in training. The files go to
    ``<out_dir>/<split>/``, ``out_dir`` defaulting to ``<checkpoint dir>/eval-<checkpoint
    name>``, so that evaluating another split keeps the first one's results. ``verbose``
    prints the accuracy line and :func:`class_report` (the worst classes, the most confused
    pairs). Returns the contents of ``eval.json``.
    """
    checkpoint = resolve_checkpoint(checkpoint)
    base = Path(out_dir) if out_dir is not None else checkpoint.parent / f"eval-{checkpoint.stem}"
    out = base / split
    loaded = load_for_eval(checkpoint, device=device, quiet=True)
    evaluator = loaded.evaluator
    assert evaluator is not None
    if split not in evaluator.eval_batches:
        raise ConfigError(
            f"split {split!r} is not available; the run has {sorted(evaluator.eval_batches)}"
        )
    scores = split_scores(evaluator, split)
    k = int(evaluator.data.num_classes)
    names = [str(c) for c in (evaluator.data.class_names or range(k))]
    result = {
        "checkpoint": str(checkpoint),
        "epoch": int(loaded.state.get("epoch", 0)),
        "split": split,
        **eval_summary(scores, names),
    }
    out.mkdir(parents=True, exist_ok=True)
    _write_tables(out, names, scores["per_class"], scores["confusion"])
    _plot_confusion(
        scores["confusion"],
        names,
        out / "confusion_matrix.png",
        title=f"{checkpoint.name} ({split})",
    )
    write_json(out / "eval.json", result)
    if verbose:
        top = f"top{scores['top_k']}"
        print(
            f"{checkpoint} ({split}, {result['samples']} images): top-1 "
            f"{100 * result['top1']:.2f}%  top-{scores['top_k']} {100 * result[top]:.2f}%  "
            f"-> {out}",
            flush=True,
        )
        print(class_report(names, scores["confusion"]), flush=True)
    return result


def split_scores(evaluator: Evaluator, split: str) -> dict[str, Any]:
    """Top-1, top-5 (top-``k`` with fewer classes), per-class accuracy and the confusion
    matrix of ``evaluator``'s model on ``split`` (torchmetrics), and the number of samples."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

    k = int(evaluator.data.num_classes)
    top_k = min(5, k)
    metrics = {
        "top1": MulticlassAccuracy(num_classes=k, top_k=1, average="micro"),
        "top5": MulticlassAccuracy(num_classes=k, top_k=top_k, average="micro"),
        "per_class": MulticlassAccuracy(num_classes=k, top_k=1, average="none"),
        "confusion": MulticlassConfusionMatrix(num_classes=k),
    }
    for metric in metrics.values():
        metric.to(evaluator.device)
    count = 0
    for scores, labels in evaluator.predict(split):
        for metric in metrics.values():
            metric.update(scores, labels)
        count += labels.shape[0]
    return {
        "samples": count,
        "top_k": top_k,
        "top1": float(metrics["top1"].compute()),
        "topk": float(metrics["top5"].compute()),
        "per_class": metrics["per_class"].compute().cpu(),
        "confusion": metrics["confusion"].compute().cpu().long(),
    }


def eval_summary(scores: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """``eval.json``'s accuracies, worst classes and most confused pairs from
    :func:`split_scores`."""
    per_class, confusion = scores["per_class"], scores["confusion"]
    support = confusion.sum(1)
    return {
        "samples": scores["samples"],
        "top1": scores["top1"],
        f"top{scores['top_k']}": scores["topk"],
        "mean_class_accuracy": float(per_class[support > 0].mean())
        if (support > 0).any()
        else None,
        "per_class_accuracy": {
            name: (float(acc) if n > 0 else None)
            for name, acc, n in zip(names, per_class.tolist(), support.tolist(), strict=True)
        },
        "worst_classes": [
            {"class": names[i], "accuracy": acc, "images": n}
            for i, acc, n in worst_classes(confusion)
        ],
        "most_confused": [
            {"true": names[t], "predicted": names[p], "images": n}
            for t, p, n in most_confused(confusion)
        ],
    }


def _write_tables(
    out: Path, names: list[str], per_class: torch.Tensor, confusion: torch.Tensor
) -> None:
    """``per_class_accuracy.csv`` and ``confusion_matrix.csv`` in ``out``."""
    support = confusion.sum(1)
    with atomic_open(out / "per_class_accuracy.csv") as f:
        w = csv.writer(f)
        w.writerow(["class", "accuracy", "support"])
        for name, acc, n in zip(names, per_class.tolist(), support.tolist(), strict=True):
            w.writerow([name, acc if n > 0 else "", n])
    with atomic_open(out / "confusion_matrix.csv") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *names])
        for name, row in zip(names, confusion.tolist(), strict=True):
            w.writerow([name, *row])


def worst_classes(confusion: torch.Tensor, count: int = 5) -> list[tuple[int, float, int]]:
    """``(class, accuracy, support)`` of the ``count`` classes with the lowest accuracy (ties:
    the lower class index first); classes without samples are left out."""
    support = confusion.sum(1)
    accuracy = confusion.diag().double() / support.clamp_min(1)
    present = (support > 0).nonzero().flatten()
    order = present[torch.argsort(accuracy[present], stable=True)][:count]
    return [(int(i), float(accuracy[i]), int(support[i])) for i in order]


def most_confused(confusion: torch.Tensor, count: int = 5) -> list[tuple[int, int, int]]:
    """``(true, predicted, images)`` of the ``count`` largest off-diagonal entries (ties: in
    row-major order); pairs never confused are left out."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    flat = off.flatten()
    order = torch.argsort(flat, descending=True, stable=True)[:count]
    k = confusion.shape[0]
    return [(int(i) // k, int(i) % k, int(flat[i])) for i in order if flat[i] > 0]


def class_report(names: list[str], confusion: torch.Tensor, count: int = 5) -> str:
    """The terminal table of ``chanloss eval``: the worst classes and most confused pairs."""
    worst = worst_classes(confusion, count)
    w = max(5, *(len(names[i]) for i, _, _ in worst))
    lines = [
        f"worst {len(worst)} of {len(names)} classes:",
        f"  {'class':<{w}}  {'accuracy':>8}  {'images':>6}",
    ]
    lines += [f"  {names[i]:<{w}}  {100 * acc:7.2f}%  {n:6d}" for i, acc, n in worst]
    pairs = most_confused(confusion, count)
    if not pairs:
        lines.append("no image was confused with another class")
        return "\n".join(lines)
    support = confusion.sum(1)
    t_w = max(4, *(len(names[t]) for t, _, _ in pairs))
    p_w = max(9, *(len(names[p]) for _, p, _ in pairs))
    lines += [
        "most confused pairs:",
        f"  {'true':<{t_w}}    {'predicted':<{p_w}}  {'images':>6}  {'of true':>7}",
    ]
    for t, p, n in pairs:
        share = 100 * n / int(support[t])
        lines.append(f"  {names[t]:<{t_w}} -> {names[p]:<{p_w}}  {n:6d}  {share:6.2f}%")
    return "\n".join(lines)


def _plot_confusion(confusion: torch.Tensor, names: list[str], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(names)
    size = min(12.0, 3.0 + 0.4 * k)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = confusion.sum(1, keepdim=True).clamp_min(1)
    ax.imshow((confusion / rows).numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    if k <= 30:
        ax.set_xticks(range(k), names, rotation=90)
        ax.set_yticks(range(k), names)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                value = int(confusion[i, j])
                if value:
                    colour = "white" if confusion[i, j] > 0.5 * rows[i, 0] else "black"
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=8, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    try:
        write_png(fig, path)
    finally:
        plt.close(fig)
