"""The model contract of docs/design.md: every model returns logits, features and embedding."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class ModelOutput(NamedTuple):
    """What ``model(x)`` returns.

    - ``logits``: ``(B, K)`` class scores of the model's own linear classifier.
    - ``features``: ``(B, C, H, W)`` the last convolutional feature map (input of CC/MC-Loss).
    - ``embedding``: ``(B, D)`` the vector the classifier reads (input of margin losses).
    - ``attention``: ``(B, C)`` the channel gate's attention in ``(0, 1)`` (input of CC-Loss's
      gate placement; the head reads ``features * attention``), ``None`` without a gate.
    """

    logits: Tensor
    features: Tensor
    embedding: Tensor
    attention: Tensor | None = None
