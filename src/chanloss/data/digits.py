"""``digits``: scikit-learn's 8x8 handwritten digits (the UCI optical digits test set)."""

from __future__ import annotations

import functools

import numpy as np

from chanloss.data.base import Splits, fixed_split, register_dataset


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.reshape(-1, 1, 8, 8), data.target


@register_dataset("digits")
def load_digits(*, root: str | None = None) -> Splits:
    """sklearn's 1,797 8x8 grey digits (values 0-16, divided by 16); fixed 20 % stratified test.

    1,437 train / 360 test images. ``root`` is not used.
    """
    images, labels = _digits_arrays()
    return fixed_split(images, labels, 0.2, 16.0, "digits")
