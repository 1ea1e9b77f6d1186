"""Losses with one call shape: ``loss(inputs, labels)``, ``loss.terms(...)``, ``loss.weights``.

Every loss is registered under a snake-case config name; :func:`create_loss` builds one from
a config entry.
"""

from chanloss.losses.base import Loss
from chanloss.losses.cross_entropy import CrossEntropyLoss
from chanloss.losses.registry import LOSSES, create_loss, register_loss

__all__ = [
    "LOSSES",
    "CrossEntropyLoss",
    "Loss",
    "create_loss",
    "register_loss",
]
