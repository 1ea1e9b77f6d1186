"""``image_folder``: images in ``root/train/<class>/*`` (and optionally ``test/``, ``val/``),
listed without decoding for stream mode (:mod:`chanloss.data.files`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from chanloss.core.messages import once
from chanloss.core.validation import check_choice, check_float, check_int, check_size
from chanloss.data.auto import probe_images
from chanloss.data.base import (
    SPLIT_SEED,
    DatasetError,
    DatasetFileNotFoundError,
    register_dataset,
    register_files,
    stratified_split,
)
from chanloss.data.files import RESIZE_MODES, FileSplits, ImageFiles, image_spec, in_memory
from chanloss.data.layout import need_root

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def _folder_files(split_dir: Path, name: str) -> dict[str, list[Path]]:
    if not split_dir.is_dir():
        raise DatasetFileNotFoundError(
            f"{name}: {split_dir} not found (expected {split_dir}/<class>/<image files>)"
        )
    classes: dict[str, list[Path]] = {}
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if class_dir.name.startswith("."):
            continue
        files = sorted(
            p
            for p in class_dir.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DatasetError(
                f"{name}: class directory {class_dir} holds no image files (expected "
                f"{', '.join(IMAGE_EXTENSIONS)})"
            )
        classes[class_dir.name] = files
    if not classes:
        raise DatasetError(f"{name}: {split_dir} holds no class directories")
    return classes


@register_files("image_folder")
def list_image_folder(
    *,
    root: str | None = None,
    image_size: int | Sequence[int] | str = "auto",
    resize: int | None = None,
    resize_mode: str = "crop",
    colour: str = "auto",
    num_workers: int | None = None,
    test_fraction: float = 0.2,
) -> FileSplits:
    """Images in ``root/train/<class>/*`` (png, jpg, ...), and optionally ``root/test/<class>/*``
    and ``root/val/<class>/*``.

    Classes are the sorted sub-directory names of ``train``; every ``test`` and ``val`` class
    must be one of them. Without ``test/``, a fixed stratified ``test_fraction`` of ``train/``
    (drawn with seed :data:`SPLIT_SEED`, the same for every run) is the test split, and the
    rest is the training set; this is printed. ``val/``, when present, is the validation split
    (``build_datasets`` then needs ``val_fraction=0``). ``colour`` is ``"RGB"`` (3 channels),
    ``"L"`` (grey, 1 channel) or ``"auto"`` (``"L"`` when every sampled training image is grey,
    else ``"RGB"``); ``image_size`` is a size as for ``cub200`` or ``"auto"`` (the size of the
    sampled training images when they share one, else their median height and width rounded
    to multiples of 8: :func:`chanloss.data.auto.auto_size`); an ``auto`` choice is printed.
    ``resize`` and ``resize_mode`` as for ``cub200``.
    """
    name = "image_folder"
    colour = str(check_choice("colour", colour, ("auto", "RGB", "L")))
    check_choice("resize_mode", resize_mode, RESIZE_MODES)
    test_fraction = check_float(
        "test_fraction", test_fraction, low=0.0, high=0.9, low_inclusive=False
    )
    auto_size = image_size == "auto"
    if not auto_size:
        check_size("image_size", image_size)
    if num_workers is not None:
        num_workers = check_int("num_workers", num_workers, low=0)
    base = need_root(root, name, "train/<class>/, optionally test/<class>/ and val/<class>/")
    train = _folder_files(base / "train", name)
    test = _folder_files(base / "test", name) if (base / "test").exists() else None
    val = _folder_files(base / "val", name) if (base / "val").exists() else None
    if auto_size or colour == "auto":
        image_size, colour = probe_images(
            [p for files in train.values() for p in files],
            None if auto_size else image_size,
            None if colour == "auto" else colour,
            name,
        )
    spec = image_spec(image_size, resize, resize_mode, colour)
    class_names = list(train)
    for split, folder in (("test", test), ("val", val)):
        unknown = sorted(set(folder or ()) - set(train))
        if unknown:
            raise DatasetError(
                f"{name}: {base / split / unknown[0]}: class {unknown[0]!r} is not among the "
                f"train classes {class_names}"
            )
    index = {c: i for i, c in enumerate(class_names)}

    def files(split: dict[str, list[Path]]) -> ImageFiles:
        paths = [p for files in split.values() for p in files]
        labels = [index[c] for c, files in split.items() for _ in files]
        return ImageFiles(paths, torch.tensor(labels, dtype=torch.int64))

    origin: dict[str, str] = {}
    if test is not None:
        train_files, test_files = files(train), files(test)
    else:
        train_files, test_files, origin["test"] = _carve_test(files(train), test_fraction, base)
    return FileSplits(
        name,
        train_files,
        test_files,
        class_names,
        spec,
        num_workers,
        val=None if val is None else files(val),
        origin=origin,
        chosen={"image_size": list(spec.size)} if auto_size else {},
    )


def has_own_val(name: str, root: str | None) -> bool:
    """True when the data set brings its own validation split: an image folder with ``val/``
    (read from the file system only; nothing is decoded)."""
    return (
        name == "image_folder" and root is not None and (Path(root).expanduser() / "val").is_dir()
    )


def _carve_test(
    train: ImageFiles, fraction: float, base: Path
) -> tuple[ImageFiles, ImageFiles, str]:
    """Split ``train`` into (train, test) for a folder without ``test/``: stratified, fixed."""
    counts = torch.bincount(train.labels)
    if int(counts.min()) < 2:
        small = int(counts.argmin())
        name = train.paths[int((train.labels == small).nonzero()[0])].parent.name
        raise DatasetError(
            f"image_folder: {base} has no test/ folder, so a stratified test split "
            f"(data.options.test_fraction={fraction:g}) is held out from train/, but class "
            f"{name!r} has {int(counts[small])} image there; expected at least 2 images per "
            "class, or test/<class>/ folders"
        )
    try:
        keep, held = stratified_split(
            train.labels.numpy(), fraction, SPLIT_SEED, "image_folder test split"
        )
    except ValueError as err:
        raise DatasetError(
            f"{err}; {base} has no test/ folder, so data.options.test_fraction={fraction} of "
            "train/ is held out as the test split: give every class at least 2 images (more "
            "for a smaller fraction), or add test/<class>/ folders"
        ) from None

    def pick(index: np.ndarray) -> ImageFiles:
        return ImageFiles([train.paths[i] for i in index], train.labels[torch.from_numpy(index)])

    how = (
        f"{len(held)} of the {len(train.paths)} train/ images ({100 * fraction:g}%, "
        f"data.options.test_fraction), stratified by class, seed {SPLIT_SEED} (the same "
        "for every run)"
    )
    once(f"image_folder: {base} has no test/ folder; the test split is {how}")
    return pick(keep), pick(held), how


load_image_folder = register_dataset("image_folder")(in_memory(list_image_folder))
