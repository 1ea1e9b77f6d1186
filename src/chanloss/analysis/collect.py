"""Rebuild a run from its checkpoint and collect what the analysis needs from its test split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from chanloss.analysis.views import (
    channel_groups,
    gap_attention,
    group_diversity,
    normalised_group_maps,
)
from chanloss.data.base import to_float_images
from chanloss.losses.cc_loss import CCLoss
from chanloss.losses.mc_loss import MCLoss

if TYPE_CHECKING:
    from chanloss.run.evaluator import Evaluator
    from chanloss.run.trainer import Trainer

__all__ = ["RunData", "collect", "example_indices", "load_evaluator", "load_trainer"]

ATTENTION_SE = "CC-Loss SE attention"
ATTENTION_GATE = "CC-Loss SE gate (the model's)"
ATTENTION_GAP = "GAP / max (no attention module)"


@dataclass
class RunData:
    """One checkpoint's test-split outputs (CPU tensors) and what the views need."""

    label: str
    checkpoint: Path
    epoch: int
    losses: list[str]
    class_names: list[str]
    attention_source: str
    labels: Tensor  # (N,)
    predictions: Tensor  # (N,)
    embeddings: Tensor  # (N, D)
    attention: Tensor  # (N, C)
    num_channels: int
    group_sizes: tuple[int, ...] | None = None  # None when C < K (no MC view)
    group_scores: Tensor | None = None  # (N, K)
    diversity: Tensor | None = None  # (N, K)
    examples: Tensor | None = None  # indices into the test split
    example_images: Tensor | None = None  # (n, C_in, H, W) in [0, 1]
    example_maps: list[Tensor] = field(default_factory=list)  # (size(g), h, w) each, in [0, 1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.labels).double().mean())


def _example_images(test: Any, examples: Tensor, crop: tuple[int, int] | None) -> Tensor:
    """The chosen test images as the model saw them, float ``(n, C, H, W)`` in ``[0, 1]``:
    indexed in memory (centre-cropped to ``crop`` when the stored images are larger), or
    decoded with the evaluation crop from a streamed split."""
    if not isinstance(getattr(test, "images", None), Tensor):
        return to_float_images(torch.stack([test[int(i)][0] for i in examples]))
    images = to_float_images(test.images[examples]).clone()
    if crop is not None:
        top, left = (images.shape[2] - crop[0]) // 2, (images.shape[3] - crop[1]) // 2
        images = images[:, :, top : top + crop[0], left : left + crop[1]].contiguous()
    return images


def load_trainer(checkpoint: str | Path, *, device: str = "auto") -> tuple[Trainer, dict[str, Any]]:
    """The run's :class:`~chanloss.run.trainer.Trainer` with the checkpoint's weights, and the state.

    ``checkpoint`` is a file or a run directory; the run is rebuilt by the one checkpoint
    loader (:func:`chanloss.run.loader.load_run` with its data), ``device`` replacing the
    stored config's, with the model's and the losses' weights (CC-Loss attention, margin heads).
    """
    from chanloss.run.loader import load_run

    loaded = load_run(checkpoint, device=device, with_data=True)
    assert loaded.trainer is not None
    return loaded.trainer, loaded.state


def load_evaluator(
    checkpoint: str | Path, *, device: str = "auto"
) -> tuple[Evaluator, dict[str, Any]]:
    """The run's :class:`~chanloss.run.evaluator.Evaluator` (model, losses, data and evaluation
    batches; no optimiser) with the checkpoint's weights, and the state: what :func:`collect`
    reads, loaded by :func:`chanloss.run.loader.load_for_eval`."""
    from chanloss.run.loader import load_for_eval

    loaded = load_for_eval(checkpoint, device=device)
    assert loaded.evaluator is not None
    return loaded.evaluator, loaded.state


def example_indices(labels: Tensor, count: int) -> Tensor:
    """The first sample of each of the first ``count`` classes that occur, in dataset order."""
    n = labels.shape[0]
    first = torch.full((int(labels.max()) + 1,), n, dtype=torch.long)
    first = first.scatter_reduce(0, labels, torch.arange(n), reduce="amin")
    present = first[first < n]
    return present[:count].sort().values


@torch.no_grad()
def collect(
    trainer: object, *, label: str, checkpoint: Path, epoch: int, images: int = 4
) -> RunData:
    """Run the model over the test split (eval mode, float32) and keep per-sample reductions;
    ``trainer`` is the run's Evaluator (:func:`load_evaluator`) or Trainer.

    The full feature maps are kept only for the ``images`` example samples; per sample the
    embedding, the attention vector, the group scores and group diversities are stored.
    """
    t = trainer
    k = int(t.data.num_classes)
    c = int(t.model.num_features)
    cc = next((s.loss for s in t.slots if isinstance(s.loss, CCLoss)), None)
    mc = next((s.loss for s in t.slots if isinstance(s.loss, MCLoss)), None)
    branch = cc if cc is not None and cc.placement == "branch" else None
    gated = getattr(t.model, "gate", None) is not None
    if mc is None and c >= k:
        mc = channel_groups(c, k).to(t.device)
    test = t.data.test
    examples = example_indices(test.labels, images)
    chosen = torch.zeros(len(test), dtype=torch.bool)
    chosen[examples] = True

    parts: dict[str, list[Tensor]] = {
        key: [] for key in ("y", "pred", "emb", "att", "scores", "div")
    }
    maps: list[Tensor] = []
    start = 0
    for x, y in t.eval_batches["test"].epoch():
        out = t.model(t._prepare(x, t.eval_aug))
        features = out.features.float()
        parts["y"].append(y.cpu())
        parts["pred"].append(t.class_scores(out).argmax(1).cpu())
        parts["emb"].append(out.embedding.float().cpu())
        if out.attention is not None:  # the model's channel gate (CC-Loss's gate placement)
            att = out.attention
        elif branch is not None:
            att = branch.attention(features)
        else:
            att = gap_attention(features)
        parts["att"].append(att.float().cpu())
        if mc is not None:
            parts["scores"].append(mc.group_scores(features).float().cpu())
            parts["div"].append(group_diversity(features, mc).cpu())
            pick = chosen[start : start + y.shape[0]].to(features.device)
            if bool(pick.any()):
                maps += [m.cpu() for m in normalised_group_maps(features[pick], mc, y[pick])]
        start += y.shape[0]

    cat = {key: torch.cat(v) if v else None for key, v in parts.items()}
    names = [str(n) for n in (t.data.class_names or range(k))]
    return RunData(
        label=label,
        checkpoint=checkpoint,
        epoch=epoch,
        losses=[s.name for s in t.slots],
        class_names=names,
        attention_source=(
            ATTENTION_GATE if gated else ATTENTION_SE if branch is not None else ATTENTION_GAP
        ),
        labels=cat["y"],
        predictions=cat["pred"],
        embeddings=cat["emb"],
        attention=cat["att"],
        num_channels=c,
        group_sizes=tuple(mc.group_sizes) if mc is not None else None,
        group_scores=cat["scores"],
        diversity=cat["div"],
        examples=examples,
        example_images=_example_images(test, examples, getattr(t.data, "crop", None)),
        example_maps=maps,
    )
