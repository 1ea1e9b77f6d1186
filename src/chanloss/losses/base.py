"""The small base class every chanloss loss derives from (the common API of shared/SPEC.md)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from chanloss.losses._checks import as_compute_dtype, check_finite, check_labels, check_tensor

ModelOutputName = Literal["logits", "features", "embedding"]


class Loss(nn.Module):
    """Base class: a loss is a weighted sum of named, unweighted terms.

    Subclasses set ``consumes`` (the model output they read: ``"logits"`` ``(B, K)``,
    ``"features"`` ``(B, C, H, W)`` or ``"embedding"`` ``(B, D)``), implement
    :meth:`compute_terms`, and may override :meth:`validate`. ``terms`` validates the input,
    casts float16/bfloat16 to float32 and turns autocast off, so every term is computed in at
    least float32 whatever the caller's precision.

    A loss whose class scores replace the model's linear classifier (margin heads, L-GM)
    sets ``provides_logits = True`` and implements ``logits(embedding)``.
    """

    consumes: ClassVar[ModelOutputName] = "logits"
    provides_logits: ClassVar[bool] = False

    def __init__(self, *, weights: dict[str, float], check_finite: bool = False) -> None:
        super().__init__()
        self.weights: dict[str, float] = dict(weights)
        self.check_finite = bool(check_finite)

    # -- the API -----------------------------------------------------------------------------
    def terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        """The unweighted components of the loss, each a 0-d tensor; keeps no state."""
        inputs, labels = self.validate(inputs, labels)
        if self.check_finite:
            check_finite(self.consumes, inputs)
        inputs = as_compute_dtype(inputs)
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            return self.compute_terms(inputs, labels, **kwargs)

    def forward(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> Tensor:
        """``sum(weights[k] * terms[k])``, a 0-d tensor."""
        return self.combine(self.terms(inputs, labels, **kwargs))

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        """Weight and add terms already computed by :meth:`terms` (no second forward pass)."""
        missing = set(terms) - set(self.weights)
        if missing:
            raise ValueError(
                f"no weight for the terms {sorted(missing)}; weights has {sorted(self.weights)}"
            )
        total: Tensor | None = None
        for name, value in terms.items():
            part = self.weights[name] * value
            total = part if total is None else total + part
        if total is None:
            raise ValueError("combine() needs at least one term")
        return total

    def update_schedule(self, step: int) -> None:  # noqa: B027 - optional hook
        """Called by the trainer before every optimisation step; for losses with a schedule."""

    # -- for subclasses ----------------------------------------------------------------------
    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        raise NotImplementedError

    def validate(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Check shapes, dtypes and labels; the default expects ``(B, K)`` logits."""
        num_classes = getattr(self, "num_classes", None)
        sizes = {1: num_classes} if num_classes is not None else None
        inputs = check_tensor("logits", inputs, ndim=2, layout="(B, K)", sizes=sizes)
        labels = check_labels(
            labels,
            batch_size=inputs.shape[0],
            num_classes=inputs.shape[1],
            validate_values=self.check_finite,
        )
        return inputs, labels

    def extra_repr(self) -> str:
        return f"weights={self.weights}"
