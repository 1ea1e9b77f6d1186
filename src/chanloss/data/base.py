"""Containers, errors, splits and the data-set registry behind ``build_datasets``."""

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
from chanloss.core.validation import (
    check_choice,
    check_float,
    check_int,
    check_options,
    keyword_options,
)


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

MODES = ("memory", "stream", "auto")
NORMALIZE = ("dataset", "imagenet", "symmetric")
#: torchvision's ImageNet statistics (for pretrained backbones).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def build_datasets(
    name: str,
    *,
    root: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.0,
    mode: str = "memory",
    memory_budget_gb: float = 4.0,
    cache_dir: str | None = None,
    normalize: str = "dataset",
    split_seed: int | None = None,
    folds: int = 0,
    fold: int = 0,
    **opts: object,
) -> DataBundle:
    """Load the data set ``name`` (a key of :data:`DATASETS`).

    ``val_fraction`` of the training split (stratified, drawn with ``split_seed``, by default
    ``seed``) becomes ``val``; with ``folds`` K >= 2 instead, fold ``fold`` of K stratified folds
    (:func:`stratified_folds`) does, so K runs validate on every training image once;
    the train/test split itself is the data set's own and does not depend on ``seed``.
    ``mode``: ``"memory"`` decodes everything into tensors; ``"stream"`` (image-file sets,
    :data:`FILE_SETS`) decodes per item, in the ``DataLoader`` workers; ``"auto"`` streams when
    the decoded set would take more than ``memory_budget_gb`` GB. ``cache_dir``: memory mode
    keeps the decoded pixels of image-file sets there, memory-mapped
    (:func:`~chanloss.data.files.cached_decode`). ``normalize``: statistics of the training
    split (``"dataset"``), ImageNet's (``"imagenet"``, for pretrained backbones) or 0.5 and
    0.5 (``"symmetric"``: ``[0, 1]`` to ``[-1, 1]``, the MC-Loss authors' ResNet-50 script).
    Unknown names or options raise ``ValueError`` listing the allowed ones; missing or
    malformed files raise :class:`DatasetError` (a ``ValueError``) naming the file.
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(sorted(DATASETS))}")
    check_options("dataset", name, opts, dataset_options(name))
    seed = check_int("seed", seed, low=0)
    val_fraction = check_float("val_fraction", val_fraction, low=0.0, high=0.99)
    mode = str(check_choice("mode", mode, MODES))
    budget = check_float("memory_budget_gb", memory_budget_gb, low=0.0)
    normalize = str(check_choice("normalize", normalize, NORMALIZE))
    if name not in FILE_SETS:
        if mode == "stream":
            raise ValueError(
                f"mode 'stream' decodes image files per batch; dataset {name!r} is not an "
                f"image-file set ({', '.join(sorted(FILE_SETS))}); use mode memory or auto"
            )
        if cache_dir is not None:
            raise ValueError(
                f"cache_dir keeps decoded image files; dataset {name!r} is not an image-file "
                f"set ({', '.join(sorted(FILE_SETS))}); remove cache_dir"
            )
        mode = "memory"
        splits = DATASETS[name](root=root, **opts)
        train = TensorImageDataset(splits.train_images, splits.train_labels)
        test = TensorImageDataset(splits.test_images, splits.test_labels)
        class_names, crop, own_val, origin = list(splits.class_names), None, None, {}
        chosen: dict[str, Any] = {}
    else:
        from chanloss.data.files import ImageFileDataset, cached_decode, decode_files, decoded_bytes

        files = FILE_SETS[name](root=root, **opts)
        if files.val is not None and val_fraction > 0:
            raise ValueError(
                f"{name}: the data has its own validation split (val/, {len(files.val.paths)} "
                f"images), so val_fraction={val_fraction:g} would make a second one: set "
                "data.val_fraction to 0, or remove val/"
            )
        if mode == "auto":
            mode = "memory" if decoded_bytes(files) <= budget * 1e9 else "stream"
        spec, class_names, origin = files.spec, list(files.class_names), dict(files.origin)
        chosen = dict(files.chosen)
        parts = {"train": files.train, "test": files.test}
        if files.val is not None:
            parts["val"] = files.val
            origin["val"] = "val/"
        if mode == "stream":
            loaded = {
                what: ImageFileDataset(split, spec, train=what == "train", seed=seed, name=name)
                for what, split in parts.items()
            }
        else:
            loaded = {
                what: TensorImageDataset(
                    cached_decode(split, spec, name, what, cache_dir, files.num_workers)
                    if cache_dir is not None
                    else decode_files(split.paths, spec, name, files.num_workers),
                    split.labels,
                )
                for what, split in parts.items()
            }
        train, test, own_val = loaded["train"], loaded["test"], loaded.get("val")
        crop = spec.size if mode == "memory" and spec.stored != spec.size else None
    val = own_val
    split_seed = seed if split_seed is None else check_int("split_seed", split_seed, low=0)
    folds = check_int("folds", folds, low=0)
    if folds == 1 or (folds and val_fraction > 0):
        raise ValueError(f"folds: expected 0 or >= 2 with val_fraction 0, got {folds}")
    if folds:
        fold = check_int("fold", fold, low=0, high=folds - 1)
        labels = train.labels.numpy()
        held = stratified_folds(labels, folds, split_seed, f"{name} validation folds")[fold]
        keep = np.setdiff1d(np.arange(len(labels)), held)
        train, val = train.subset(keep), train.subset(held)
        if mode == "stream":
            val = val.with_train(False)
    elif val_fraction > 0:
        keep, held = stratified_split(
            train.labels.numpy(), val_fraction, split_seed, f"{name} validation split"
        )
        train, val = train.subset(keep), train.subset(held)
        if mode == "stream":
            val = val.with_train(False)
        origin["val"] = f"{100 * val_fraction:g}% of the training split, stratified, seed {seed}"
    if mode == "stream":
        sample = train.sample_pixels() if normalize == "dataset" else None
        channels, size = spec.channels, spec.size
    else:
        sample = train.images if normalize == "dataset" else None
        channels = train.images.shape[1]
        size = crop or (train.images.shape[2], train.images.shape[3])
    if sample is not None:
        mean, std = channel_stats(sample)
    elif normalize == "symmetric":
        mean, std = (0.5,) * channels, (0.5,) * channels
    elif channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (sum(IMAGENET_MEAN) / 3,) * channels, (sum(IMAGENET_STD) / 3,) * channels
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=len(class_names),
        in_channels=channels,
        image_size=size,
        mean=mean,
        std=std,
        class_names=class_names,
        mode=mode,
        crop=crop,
        chosen=chosen,
        splits={
            split: {"images": len(ds), "from": origin.get(split, "the data set's own")}
            for split, ds in (("train", train), ("val", val), ("test", test))
            if ds is not None
        },
    )
