"""``cifar10``: CIFAR-10 (Krizhevsky 2009) from its python pickles."""

from __future__ import annotations

from chanloss.data.base import Splits, register_dataset
from chanloss.data.cifar_pickle import load_cifar


@register_dataset("cifar10")
def load_cifar10(*, root: str | None = None) -> Splits:
    """CIFAR-10 python pickles: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch,
    batches.meta}`` (50,000 / 10,000 images, 32x32 RGB)."""
    return load_cifar(
        root,
        "cifar10",
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        10,
    )
