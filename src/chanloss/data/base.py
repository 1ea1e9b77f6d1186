"""Containers, errors, splits and the data-set registry behind ``build_datasets``
(:mod:`chanloss.data.build`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from chanloss.core.errors import DatasetError as DatasetError
from chanloss.core.errors import DatasetFileNotFoundError as DatasetFileNotFoundError
from chanloss.core.validation import check_int, keyword_options


def to_float_images(images: Tensor) -> Tensor:
    """A batch of ``.images`` as floats in ``[0, 1]``: uint8 ``0..255`` becomes float32
    ``/ 255``; a floating-point tensor is returned as it is (no copy).

    Convert after indexing (and after moving to the device) so that only the batch is ever
    held as float.
    """
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 255.0
    if images.is_floating_point():
        return images
    raise ValueError(
        f"images must be uint8 (0..255) or floating point (in [0, 1]), got {images.dtype}"
    )


class TensorImageDataset(Dataset):
    """An in-memory image set: ``images`` ``(N, C, H, W)``, ``labels`` ``(N,)`` int64.

    ``images`` is either float32 in ``[0, 1]`` or uint8 ``0..255`` (scale ``1/255`` implied;
    data sets decoded from 8-bit files are kept so, in a quarter of the memory). Items are
    ``(image, int(label))`` with the image always float32 ``(C, H, W)`` in ``[0, 1]``. A trainer
    can skip the per-item path and batch the tensors directly:
    ``to_float_images(images[idx].to(device))``, ``labels[idx].to(device)``.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if (
            not isinstance(images, Tensor)
            or images.dim() != 4
            or images.dtype not in (torch.float32, torch.uint8)
        ):
            got = (
                f"{tuple(images.shape)} {images.dtype}"
                if isinstance(images, Tensor)
                else type(images).__name__
            )
            raise ValueError(
                f"images must be a float32 (in [0, 1]) or uint8 (0..255) tensor (N, C, H, W), "
                f"got {got}"
            )
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
            got = (
                f"{tuple(labels.shape)} {labels.dtype}"
                if isinstance(labels, Tensor)
                else type(labels).__name__
            )
            raise ValueError(f"labels must be an int64 tensor (N,), got {got}")
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"images and labels must have the same length, got {images.shape[0]} images "
                f"and {labels.shape[0]} labels"
            )
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return to_float_images(self.images[index]), int(self.labels[index])

    def subset(self, indices: Sequence[int] | np.ndarray | Tensor) -> TensorImageDataset:
        """A new data set holding copies of the given items (same dtype)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return TensorImageDataset(self.images[idx], self.labels[idx])


@dataclass
class DataBundle:
    """What ``build_datasets`` returns; ``val`` is ``None`` when ``val_fraction == 0``.

    ``mean``/``std`` are per-channel statistics of the ``train`` split (after the validation
    split is carved out; in stream mode of a sample of it; ImageNet's with ``normalize=
    "imagenet"``), for ``build_augmentation``. ``mode`` is ``"memory"`` (splits are
    :class:`TensorImageDataset`) or ``"stream"`` (:class:`~chanloss.data.files.ImageFileDataset`).
    ``image_size`` is what the model sees; ``crop`` is set when the stored images are larger
    and the augmentation must crop them to ``image_size`` (memory mode with ``resize``).
    """

    train: Any  # TensorImageDataset, or ImageFileDataset in stream mode
    val: Any
    test: Any
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str]
    mode: str = "memory"
    crop: tuple[int, int] | None = None
    #: each split's size and how it was made (a run's ``summary.json`` stores it), e.g.
    #: ``{"test": {"images": 80, "from": "80 of the 400 train/ images (20%, ...)"}}``
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the data-set options an ``auto`` value was resolved to (``{"image_size": [48, 48]}``):
    #: a run stores them in its config, so that it resumes and predicts at the size it trained
    chosen: dict[str, Any] = field(default_factory=dict)


class Splits(NamedTuple):
    """A loader's result: fixed train and test splits, images float32 in ``[0, 1]`` or uint8."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    class_names: list[str]


DatasetLoader = Callable[..., Splits]

#: Data-set loaders, name -> ``loader(*, root, **opts) -> Splits``.
DATASETS: dict[str, DatasetLoader] = {}

#: Image-file sets that can be streamed, name -> ``lister(*, root, **opts) -> FileSplits``
#: (same options as the loader of the same name in :data:`DATASETS`).
FILE_SETS: dict[str, Callable[..., Any]] = {}

#: Seed of the fixed train/test splits of digits, mnist5k and image folders without ``test/``.
SPLIT_SEED = 0


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator that adds a loader to :data:`DATASETS` under ``name``."""

    def decorate(loader: DatasetLoader) -> DatasetLoader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = loader
        return loader

    return decorate


def register_files(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that adds an image-file lister to :data:`FILE_SETS` under ``name``."""

    def decorate(lister: Callable[..., Any]) -> Callable[..., Any]:
        if name in FILE_SETS:
            raise ValueError(f"image-file set {name!r} is already registered")
        FILE_SETS[name] = lister
        return lister

    return decorate


def dataset_options(name: str) -> tuple[str, ...]:
    """The options a registered data set accepts (besides ``root``)."""
    return tuple(o for o in keyword_options(DATASETS[name]) if o != "root")


def channel_stats(
    images: Tensor, chunk: int | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of ``images`` in ``[0, 1]`` units.

    ``images`` is float or uint8 (see :func:`to_float_images`); it is read ``chunk`` images at
    a time (default: about 4 million values per chunk), each converted and accumulated in
    float64, so the whole set is never held as float.
    """
    n, c = images.shape[:2]
    if chunk is None:
        chunk = max(1, (1 << 22) // max(1, images.shape[1:].numel()))
    chunk = check_int("chunk", chunk, low=1)
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, n, chunk):
        block = to_float_images(images[start : start + chunk]).to(torch.float64)
        total += block.sum(dim=(0, 2, 3))
        total_sq += block.square().sum(dim=(0, 2, 3))
    count = n * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def stratified_folds(labels: np.ndarray, folds: int, seed: int, what: str) -> list[np.ndarray]:
    """The sorted indices of each of ``folds`` stratified folds of ``labels`` (sklearn
    ``StratifiedKFold``, shuffled with ``seed``); every class needs at least ``folds`` samples."""
    from sklearn.model_selection import StratifiedKFold

    classes, counts = np.unique(labels, return_counts=True)
    if len(labels) == 0 or counts.min() < folds:
        least = int(classes[counts.argmin()]) if len(labels) else None
        raise ValueError(
            f"{what}: {folds} folds need at least {folds} images of every class; class "
            f"{least} has {int(counts.min()) if len(labels) else 0}"
        )
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [np.sort(held) for _, held in split.split(np.zeros(len(labels)), labels)]


def stratified_split(
    labels: np.ndarray, test_size: float | int, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)`` of a stratified split (sklearn ``train_test_split``)."""
    from sklearn.model_selection import train_test_split

    try:
        keep, held = train_test_split(
            np.arange(len(labels)), test_size=test_size, random_state=seed, stratify=labels
        )
    except ValueError as exc:
        raise ValueError(
            f"{what}: cannot make a stratified split of size {test_size} from {len(labels)} "
            f"samples of {len(np.unique(labels))} classes: {exc}"
        ) from exc
    return np.sort(keep), np.sort(held)


def _to_tensors(images: np.ndarray, labels: np.ndarray, scale: float) -> tuple[Tensor, Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)) / scale
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def fixed_split(
    images: np.ndarray, labels: np.ndarray, test_size: float | int, scale: float, name: str
) -> Splits:
    """Fixed stratified train/test splits (seed :data:`SPLIT_SEED`) of ``images`` divided by
    ``scale``, as float32 tensors; classes named ``"0"``, ``"1"``, ..."""
    train_idx, test_idx = stratified_split(labels, test_size, SPLIT_SEED, name)
    xtr, ytr = _to_tensors(images[train_idx], labels[train_idx], scale)
    xte, yte = _to_tensors(images[test_idx], labels[test_idx], scale)
    names = [str(c) for c in range(int(labels.max()) + 1)]
    return Splits(xtr, ytr, xte, yte, names)
