"""``build_datasets``: a registered data set's splits, its validation split and its
normalisation statistics, as the :class:`~chanloss.data.base.DataBundle` a run trains on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from chanloss.core.validation import check_choice, check_float, check_int, check_options
from chanloss.data.base import (
    DATASETS,
    FILE_SETS,
    DataBundle,
    TensorImageDataset,
    channel_stats,
    dataset_options,
    stratified_folds,
    stratified_split,
)
from chanloss.data.files import (
    ImageFileDataset,
    ImageSpec,
    cached_decode,
    decode_files,
    decoded_bytes,
)

MODES = ("memory", "stream", "auto")
NORMALIZE = ("dataset", "imagenet", "symmetric")
#: torchvision's ImageNet statistics (for pretrained backbones).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class _Loaded:
    """A data set's splits as loaded, before a validation split is carved out of ``train``."""

    train: Any  # TensorImageDataset, or ImageFileDataset in stream mode
    test: Any
    val: Any
    class_names: list[str]
    mode: str
    origin: dict[str, str]
    chosen: dict[str, Any]
    spec: ImageSpec | None = None  # an image-file set's
    crop: tuple[int, int] | None = None


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
    if name in FILE_SETS:
        data = _load_files(name, root, opts, mode, budget, cache_dir, seed, val_fraction)
    else:
        data = _load_tensors(name, root, opts, mode, cache_dir)
    split_seed = seed if split_seed is None else check_int("split_seed", split_seed, low=0)
    folds = check_int("folds", folds, low=0)
    if folds == 1 or (folds and val_fraction > 0):
        raise ValueError(f"folds: expected 0 or >= 2 with val_fraction 0, got {folds}")
    if folds:
        fold = check_int("fold", fold, low=0, high=folds - 1)
    _hold_out_validation(data, name, val_fraction, split_seed, folds, fold, seed)
    channels, size, mean, std = _shape_and_statistics(data, normalize)
    return DataBundle(
        train=data.train,
        val=data.val,
        test=data.test,
        num_classes=len(data.class_names),
        in_channels=channels,
        image_size=size,
        mean=mean,
        std=std,
        class_names=data.class_names,
        mode=data.mode,
        crop=data.crop,
        chosen=data.chosen,
        splits={
            split: {"images": len(ds), "from": data.origin.get(split, "the data set's own")}
            for split, ds in (("train", data.train), ("val", data.val), ("test", data.test))
            if ds is not None
        },
    )


def _load_tensors(
    name: str, root: str | None, opts: dict[str, object], mode: str, cache_dir: str | None
) -> _Loaded:
    """A data set that a loader returns as tensors (not an image-file set): memory mode."""
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
    splits = DATASETS[name](root=root, **opts)
    train = TensorImageDataset(splits.train_images, splits.train_labels)
    test = TensorImageDataset(splits.test_images, splits.test_labels)
    return _Loaded(train, test, None, list(splits.class_names), "memory", {}, {})


def _load_files(
    name: str,
    root: str | None,
    opts: dict[str, object],
    mode: str,
    budget: float,
    cache_dir: str | None,
    seed: int,
    val_fraction: float,
) -> _Loaded:
    """An image-file set, decoded into memory or streamed (``mode="auto"``: by ``budget`` GB)."""
    files = FILE_SETS[name](root=root, **opts)
    if files.val is not None and val_fraction > 0:
        raise ValueError(
            f"{name}: the data has its own validation split (val/, {len(files.val.paths)} "
            f"images), so val_fraction={val_fraction:g} would make a second one: set "
            "data.val_fraction to 0, or remove val/"
        )
    if mode == "auto":
        mode = "memory" if decoded_bytes(files) <= budget * 1e9 else "stream"
    spec, origin = files.spec, dict(files.origin)
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
    crop = spec.size if mode == "memory" and spec.stored != spec.size else None
    return _Loaded(
        loaded["train"],
        loaded["test"],
        loaded.get("val"),
        list(files.class_names),
        mode,
        origin,
        dict(files.chosen),
        spec,
        crop,
    )


def _hold_out_validation(
    data: _Loaded,
    name: str,
    val_fraction: float,
    split_seed: int,
    folds: int,
    fold: int,
    seed: int,
) -> None:
    """Carve the validation split out of ``data.train``: fold ``fold`` of ``folds``, or a
    stratified ``val_fraction``; neither when both are 0."""
    if folds:
        labels = data.train.labels.numpy()
        held = stratified_folds(labels, folds, split_seed, f"{name} validation folds")[fold]
        keep = np.setdiff1d(np.arange(len(labels)), held)
    elif val_fraction > 0:
        keep, held = stratified_split(
            data.train.labels.numpy(), val_fraction, split_seed, f"{name} validation split"
        )
    else:
        return
    data.train, data.val = data.train.subset(keep), data.train.subset(held)
    if data.mode == "stream":
        data.val = data.val.with_train(False)
    if not folds:
        data.origin["val"] = (
            f"{100 * val_fraction:g}% of the training split, stratified, seed {seed}"
        )


def _shape_and_statistics(
    data: _Loaded, normalize: str
) -> tuple[int, tuple[int, int], tuple[float, ...], tuple[float, ...]]:
    """Channels and image size the model sees, and the normalisation's mean and std."""
    if data.mode == "stream":
        sample = data.train.sample_pixels() if normalize == "dataset" else None
        channels, size = data.spec.channels, data.spec.size  # type: ignore[union-attr]
    else:
        sample = data.train.images if normalize == "dataset" else None
        channels = data.train.images.shape[1]
        size = data.crop or (data.train.images.shape[2], data.train.images.shape[3])
    if sample is not None:
        mean, std = channel_stats(sample)
    elif normalize == "symmetric":
        mean, std = (0.5,) * channels, (0.5,) * channels
    elif channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (sum(IMAGENET_MEAN) / 3,) * channels, (sum(IMAGENET_STD) / 3,) * channels
    return channels, size, mean, std
