"""The small base class every chanloss loss derives from (the common API of docs/design.md)."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from chanloss.core.validation import as_compute_dtype, check_finite, check_labels, check_tensor

ModelOutputName = Literal["logits", "features", "embedding", "attention"]


class Loss(nn.Module):
    """Base class: a loss is a weighted sum of named, unweighted terms.

    Subclasses set ``consumes`` (the model output they read: ``"logits"`` ``(B, K)``,
    ``"features"`` ``(B, C, H, W)``, ``"embedding"`` ``(B, D)`` or the channel gate's
    ``"attention"`` ``(B, C)``), implement
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

    def update_state(self, inputs: Tensor, labels: Tensor) -> None:  # noqa: B027 - optional hook
        """Called by the trainer once per training step, after the optimiser step, with the
        step's (detached) model output that this loss consumes and the labels; for state that is
        not moved by the optimiser (the centre loss's published centre update). No-op here."""

    # -- for subclasses ----------------------------------------------------------------------
    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        raise NotImplementedError

    def validate(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Check shapes, dtypes and labels of ``(B, K)`` logits or ``(B, D)`` embeddings.

        Losses on ``embedding`` read ``self.embedding_dim`` and ``self.num_classes``; losses
        on ``features`` override this method.
        """
        if self.consumes == "embedding":
            inputs = self.check_embedding(inputs)
            num_classes = self.num_classes
        else:
            num_classes = getattr(self, "num_classes", None)
            sizes = {1: num_classes} if num_classes is not None else None
            inputs = check_tensor("logits", inputs, ndim=2, layout="(B, K)", sizes=sizes)
            num_classes = inputs.shape[1]
        labels = check_labels(
            labels,
            batch_size=inputs.shape[0],
            num_classes=num_classes,
            validate_values=self.check_finite,
        )
        return inputs, labels

    def check_embedding(self, embedding: Tensor) -> Tensor:
        """Check a ``(B, D)`` embedding against ``self.embedding_dim``."""
        return check_tensor(
            "embedding", embedding, ndim=2, layout="(B, D)", sizes={1: self.embedding_dim}
        )

    def logits(self, embedding: Tensor) -> Tensor:
        """Class scores ``(B, K)`` without margin, for inference (losses with
        ``provides_logits``); computed in at least float32 like :meth:`terms`."""
        if not self.provides_logits:
            raise NotImplementedError(f"{type(self).__name__} produces no class scores")
        x = self.check_embedding(embedding)
        if self.check_finite:
            check_finite("embedding", x)
        x = as_compute_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.compute_logits(x)

    def compute_logits(self, embedding: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"weights={self.weights}"
