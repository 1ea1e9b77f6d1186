"""The model contract of docs/design.md: every model returns logits, features and embedding."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class ModelOutput(NamedTuple):
    """What ``model(x)`` returns.

    - ``logits``: ``(B, K)`` class scores of the model's own linear classifier.
    - ``features``: ``(B, C, H, W)`` the last convolutional feature map (input of CC/MC-Loss).
    - ``embedding``: ``(B, D)`` the vector the classifier reads (input of margin losses).
    """

    logits: Tensor
    features: Tensor
    embedding: Tensor
