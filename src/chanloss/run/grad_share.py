"""Gradient share: how hard each loss term pulls on the tensors the losses read, against the
reference loss (cross-entropy).

Every ``grad_share_every`` training steps, before the step's backward pass, the gradient of
each weighted term ``w_slot * w_term * term`` w.r.t. the model's feature map, embedding and (with
a channel gate) attention is taken from the graph the step already built
(``torch.autograd.grad(..., retain_graph=True)``: no extra forward, no change to the parameters'
gradients, no random numbers drawn), so a run gives the same weights with the record on or off.
The record is the ratio of the L2 norms, ``||d term / d T|| / ||d ref / d T||``, with the
reference the first ``ce`` term of the config (else the config's first term); its own norm on the
feature map is kept as ``gnorm_<ref>``. Only at those steps are numbers copied to the host.

Columns (metrics.csv holds each epoch's mean over its recorded steps; TensorBoard every point
under ``grad_share/``): ``gshare_<term>`` (feature map), ``gshare_<term>_emb`` (embedding),
``gshare_<term>_att`` (attention, with a gate), ``gnorm_<ref>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["GradShare", "reference_column"]

#: Suffix of the column per tensor a share is measured on (the feature map has none).
_TENSORS = {"features": "", "embedding": "_emb", "attention": "_att"}


def reference_column(slots: Sequence[Any]) -> str:
    """The column of the reference term: the first ``ce`` loss's term, else the first term."""
    for slot in slots:
        if slot.name == "ce":
            return next(iter(slot.columns.values()))
    return next(iter(slots[0].columns.values()))


class GradShare:
    """The gradient-share record of one run (see the module docstring).

    ``slots`` are the run's loss slots (:class:`~chanloss.run.builders.LossSlot`),
    ``every`` the step interval (0: off; a run of one term records nothing),
    ``gated`` whether the model's output carries ``attention``.
    """

    def __init__(self, slots: Sequence[Any], every: int, *, gated: bool) -> None:
        self.slots = list(slots)
        self.terms = [
            (slot, term, col) for slot in self.slots for term, col in slot.columns.items()
        ]
        self.every = int(every)
        self.enabled = self.every > 0 and len(self.terms) > 1
        self.tensors = [t for t in _TENSORS if gated or t != "attention"]
        self.reference = reference_column(self.slots) if self.enabled else ""
        self.columns: list[str] = []
        if self.enabled:
            self.columns = [
                f"gshare_{col}{_TENSORS[t]}"
                for _, _, col in self.terms
                if col != self.reference
                for t in self.tensors
            ]
            self.columns.append(f"gnorm_{self.reference}")
        self.points: list[list[float]] = []  # this epoch's recorded values, row per point

    def due(self, step: int) -> bool:
        """Whether the global step ``step`` (0-based) is a recording point."""
        return self.enabled and step % self.every == 0

    def norms(
        self, out: Any, slot_terms: Sequence[dict[str, Tensor]], scale: float = 1.0
    ) -> Tensor:
        """``(terms, tensors)`` gradient norms of each weighted term on each tensor, a device
        tensor (``scale`` multiplies every term, as float16 training's loss scale does, so
        that small gradients do not underflow; the norms are divided by it again)."""
        inputs = [getattr(out, name) for name in self.tensors]
        rows = []
        for slot, term, _ in self.terms:
            value = slot_terms[self.slots.index(slot)][term]
            part = (scale * slot.weight * slot.loss.weights[term]) * value
            if not part.requires_grad:
                rows.append(torch.zeros(len(inputs), device=inputs[0].device))
                continue
            grads = torch.autograd.grad(part, inputs, retain_graph=True, allow_unused=True)
            zero = inputs[0].new_zeros((), dtype=torch.float)
            rows.append(torch.stack([zero if g is None else g.float().norm() for g in grads]))
        return torch.stack(rows) / scale

    def record(
        self,
        out: Any,
        slot_terms: Sequence[dict[str, Tensor]],
        *,
        step: int,
        scale: float = 1.0,
        writer: Any = None,
    ) -> dict[str, float]:
        """Measure at this step, keep the values for the epoch's means and return them."""
        norms = self.norms(out, slot_terms, scale).tolist()  # the one host copy
        cols = [col for _, _, col in self.terms]
        ref = norms[cols.index(self.reference)]
        values: list[float] = []
        for col, row in zip(cols, norms, strict=True):
            if col == self.reference:
                continue
            values += [_ratio(v, r) for v, r in zip(row, ref, strict=True)]
        values.append(ref[0])
        self.points.append(values)
        point = dict(zip(self.columns, values, strict=True))
        if writer is not None:
            for name, value in point.items():
                writer.add_scalar(f"grad_share/{name}", value, step)
        return point

    def epoch_means(self) -> dict[str, float | None]:
        """The mean of each column over the points recorded since the last call (``None``
        when the epoch had none); starts the next epoch's record."""
        points, self.points = self.points, []
        if not points:
            return dict.fromkeys(self.columns)
        return {
            col: math.fsum(p[i] for p in points) / len(points) for i, col in enumerate(self.columns)
        }


def _ratio(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.nan
