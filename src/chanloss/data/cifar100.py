"""``cifar100``: CIFAR-100 (Krizhevsky 2009) from its python pickles."""

from __future__ import annotations

from chanloss.data.base import Splits, register_dataset
from chanloss.data.cifar_pickle import load_cifar


@register_dataset("cifar100")
def load_cifar100(*, root: str | None = None) -> Splits:
    """CIFAR-100 python pickles: ``root/cifar-100-python/{train, test, meta}``, fine labels."""
    return load_cifar(
        root,
        "cifar100",
        "cifar-100-python",
        ["train"],
        "test",
        "meta",
        "fine_labels",
        "fine_label_names",
        100,
    )
