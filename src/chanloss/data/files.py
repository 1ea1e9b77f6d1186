"""Image-file data sets: the decode transforms, memory/stream modes and the on-disk cache.

Sets stored as image files (CUB-200-2011, image folders) are listed as :class:`FileSplits`
and then either decoded once into uint8 memory (``mode="memory"``) or decoded per batch in
``DataLoader`` workers (``mode="stream"``, :class:`ImageFileDataset`). The pixels follow the
:class:`ImageSpec`:

- without ``resize``: the image is brought to ``size`` by ``resize_mode`` (``"crop"``: scale to
  cover, cut the centre; ``"stretch"``: ignore the aspect ratio), in training and evaluation;
- with ``resize = R`` (the fine-grained recipe): the shorter side is scaled to ``R``
  (``"stretch"``: the whole image to ``R x R``); training takes a random ``size`` crop of that
  image, evaluation the centre ``size`` crop of its centre ``R x R`` square.

Memory mode keeps the centre ``R x R`` square of every image and crops ``size`` on the device
(randomly in training, the same centre crop in evaluation), so its evaluation pixels equal
stream mode's; its training crops come from the square rather than the whole resized image.
Flips and normalisation are applied on the device in both modes
(:func:`~chanloss.data.augment.build_augmentation`).

Random crops in stream mode are drawn from a generator seeded with ``(seed, epoch, index)``:
a run repeats whatever the number of workers and whichever worker decodes an image.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from chanloss.core.errors import DatasetError, DatasetFileNotFoundError
from chanloss.core.validation import check_choice, check_int, check_size
from chanloss.data.base import Splits

RESIZE_MODES = ("crop", "stretch")
#: Bumped whenever the decoded pixels of a cache file would change for the same spec
#: (2: EXIF orientation applied, 16-bit grey scaled to 8 bits).
CACHE_VERSION = 2
#: Training images decoded to estimate the channel statistics in stream mode.
STATS_SAMPLE = 256


@dataclass(frozen=True)
class ImageSpec:
    """How image files become pixels: ``size`` ``(height, width)`` seen by the model,
    ``resize`` (shorter side before cropping, or ``None``), ``resize_mode`` and ``colour``
    (``"RGB"`` or ``"L"``); see the module docstring."""

    size: tuple[int, int]
    resize: int | None = None
    resize_mode: str = "crop"
    colour: str = "RGB"

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.colour not in ("RGB", "L"):
            raise ValueError(f"colour must be 'RGB' or 'L', got {self.colour!r}")
        if self.resize is not None and self.resize < max(self.size):
            raise ValueError(
                f"resize ({self.resize}) must be at least image_size {list(self.size)} (the "
                "crop is cut from the resized image)"
            )

    @property
    def channels(self) -> int:
        return 1 if self.colour == "L" else 3

    @property
    def stored(self) -> tuple[int, int]:
        """The ``(height, width)`` kept per image in memory mode."""
        return (self.resize, self.resize) if self.resize is not None else self.size


@dataclass
class ImageFiles:
    """One split of an image-file set: ``paths`` and their ``labels`` (int64 ``(N,)``)."""

    paths: list[Path]
    labels: Tensor


@dataclass
class FileSplits:
    """What an image-file set lists: train/test files, class names and the decode spec.

    ``val`` is the set's own validation split (an image folder's ``val/``), else ``None``;
    ``origin`` says how a split was made when it is not the set's own (an image folder
    without ``test/``: ``{"test": "20% of train/, stratified, seed 0"}``); ``chosen`` the
    options an ``auto`` value was resolved to (``{"image_size": [48, 48]}``)."""

    name: str
    train: ImageFiles
    test: ImageFiles
    class_names: list[str]
    spec: ImageSpec
    num_workers: int | None = None  # decoding threads in memory mode
    val: ImageFiles | None = None
    origin: dict[str, str] = field(default_factory=dict)
    chosen: dict[str, Any] = field(default_factory=dict)


# -- pixels ------------------------------------------------------------------------------------
def fit(image: Image.Image, size: tuple[int, int], mode: str) -> Image.Image:
    """Resize ``image`` to ``size = (height, width)``: ``"stretch"`` ignores the aspect ratio,
    ``"crop"`` scales it to cover the target and cuts the centre."""
    height, width = size
    if mode == "stretch":
        return image.resize((width, height), Image.Resampling.BILINEAR)
    image = _shorter_side(image, height, width)
    return image.crop(centre_box(image.height, image.width, size))


def _shorter_side(image: Image.Image, height: int, width: int) -> Image.Image:
    scale = max(height / image.height, width / image.width)
    new_w = max(width, round(image.width * scale))
    new_h = max(height, round(image.height * scale))
    return image.resize((new_w, new_h), Image.Resampling.BILINEAR)


def centre_box(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The PIL box ``(left, top, right, bottom)`` of the centre ``size`` crop."""
    top, left = (height - size[0]) // 2, (width - size[1]) // 2
    return left, top, left + size[1], top + size[0]


def _open(path: Path, colour: str, name: str) -> Image.Image:
    """The image file as it looks, in ``colour``: its EXIF orientation applied (a phone photo
    taken upright is upright) and 16/32-bit grey scaled to 8 bits (:func:`_eight_bit`)."""
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return _eight_bit(upright).convert(colour)
    except FileNotFoundError as exc:
        raise DatasetFileNotFoundError(f"{name}: image file not found: {path}") from exc
    except Exception as exc:
        raise DatasetError(
            f"{name}: cannot read image {path}: {type(exc).__name__}: {exc}"
        ) from exc


def _eight_bit(image: Image.Image) -> Image.Image:
    """Grey images of more than 8 bits as 8-bit ``"L"``, scaled rather than clipped
    (Pillow's ``convert`` clips every value above 255 to white): 16-bit (``"I;16"``, a 16-bit
    PNG) by 255/65535; 32-bit integers (``"I"``) the same when they fit 16 bits, else by their
    maximum; floats (``"F"``) as ``[0, 1]`` when they fit it, else by their maximum."""
    if not image.mode.startswith(("I", "F")):
        return image
    values = np.asarray(image, dtype=np.float64)
    top = float(values.max(initial=0.0))
    if image.mode.startswith("I;16") or (image.mode == "I" and 255 < top <= 65535):
        scale = 255.0 / 65535.0
    elif image.mode == "F" and top <= 1.0:
        scale = 255.0
    else:  # "I" within 0..255 stays as it is
        scale = 1.0 if top <= 255 else 255.0 / top
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")


def _resized(image: Image.Image, spec: ImageSpec) -> Image.Image:
    """The image before cropping (``resize`` set): shorter side (or both sides) to ``R``."""
    r = spec.resize
    assert r is not None
    if spec.resize_mode == "stretch":
        return image.resize((r, r), Image.Resampling.BILINEAR)
    return _shorter_side(image, r, r)


def _array(image: Image.Image) -> np.ndarray:
    array = np.array(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def stored_pixels(path: Path, spec: ImageSpec, name: str) -> np.ndarray:
    """Memory mode: ``(H, W, C)`` uint8 of ``spec.stored`` size."""
    image = _open(path, spec.colour, name)
    if spec.resize is None:
        return _array(fit(image, spec.size, spec.resize_mode))
    image = _resized(image, spec)
    return _array(image.crop(centre_box(image.height, image.width, spec.stored)))


def eval_pixels(path: Path, spec: ImageSpec, name: str) -> np.ndarray:
    """Evaluation: ``(H, W, C)`` uint8 of ``spec.size`` (the centre of the stored square)."""
    array = stored_pixels(path, spec, name)
    left, top, right, bottom = centre_box(array.shape[0], array.shape[1], spec.size)
    return array[top:bottom, left:right]


def train_pixels(path: Path, spec: ImageSpec, rng: np.random.Generator, name: str) -> np.ndarray:
    """Training: ``(H, W, C)`` uint8 of ``spec.size``, a random crop of the resized image."""
    if spec.resize is None:
        return stored_pixels(path, spec, name)
    array = _array(_resized(_open(path, spec.colour, name), spec))
    top = int(rng.integers(0, array.shape[0] - spec.size[0] + 1))
    left = int(rng.integers(0, array.shape[1] - spec.size[1] + 1))
    return array[top : top + spec.size[0], left : left + spec.size[1]]


def decode_files(
    paths: Sequence[Path],
    spec: ImageSpec,
    name: str,
    num_workers: int | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Decode ``paths`` (memory mode) into one uint8 ``(N, C, H, W)`` tensor (or into ``out``),
    in ``num_workers`` threads (default ``min(8, cpu_count)``)."""
    height, width = spec.stored
    if out is None:
        out = torch.empty((len(paths), spec.channels, height, width), dtype=torch.uint8)

    def work(i: int) -> None:
        out[i] = torch.from_numpy(stored_pixels(paths[i], spec, name)).permute(2, 0, 1)

    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    progress = _DecodeProgress(name, len(paths))
    if workers <= 1 or len(paths) < 2:
        for i in range(len(paths)):
            work(i)
            progress.tick(i + 1)
    else:
        with ThreadPoolExecutor(workers) as pool:
            for done, _ in enumerate(pool.map(work, range(len(paths))), 1):
                progress.tick(done)
    return out


#: Seconds between the progress lines of a long decode (on stderr, terminal or log file alike).
PROGRESS_EVERY_S = 10.0
_clock = time.monotonic  # a test replaces it


class _DecodeProgress:
    """A line ``<name>: decoded 4,096/11,788 images (35%), 10 s, about 19 s left`` every
    :data:`PROGRESS_EVERY_S` seconds while a decode lasts longer than that."""

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total = name, total
        self.start = self.last = _clock()

    def tick(self, done: int) -> None:
        now = _clock()
        if now - self.last < PROGRESS_EVERY_S or done >= self.total:
            return
        self.last = now
        elapsed = now - self.start
        left = elapsed * (self.total - done) / done
        print(
            f"{self.name}: decoded {done:,}/{self.total:,} images ({100 * done // self.total}%), "
            f"{elapsed:.0f} s, about {left:.0f} s left",
            file=sys.stderr,
            flush=True,
        )


# -- the on-disk cache -------------------------------------------------------------------------
def cache_key(files: ImageFiles, spec: ImageSpec) -> str:
    """A hash of the file list (paths, sizes, modification times), labels and the spec."""
    digest = hashlib.sha256()
    header = {
        "version": CACHE_VERSION,
        "size": list(spec.size),
        "resize": spec.resize,
        "resize_mode": spec.resize_mode,
        "colour": spec.colour,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for path in files.paths:
        try:
            stat = path.stat()
        except FileNotFoundError as exc:
            raise DatasetFileNotFoundError(f"image file not found: {path}") from exc
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    digest.update(files.labels.numpy().tobytes())
    return digest.hexdigest()[:20]


def cached_decode(
    files: ImageFiles,
    spec: ImageSpec,
    name: str,
    split: str,
    cache_dir: str | os.PathLike,
    num_workers: int | None = None,
) -> Tensor:
    """Memory-mode pixels of ``files`` through a memory-mapped ``.npy`` file in ``cache_dir``.

    The file is named by :func:`cache_key`: a changed file list, file, size or mode gives a new
    name (and the stale files of the same set and split are removed once the new one is
    written). It is written to a temporary file and renamed, so a killed run leaves no partial
    cache. The returned tensor shares the map (copy-on-write): its pages are read from disk as
    they are used, so a set larger than RAM can be held.
    """
    directory = Path(cache_dir).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(
            f"{name}: cannot create the cache directory {directory}: {err.strerror or err}"
        ) from None
    prefix = f"{name}-{split}-"
    path = directory / f"{prefix}{cache_key(files, spec)}.npy"
    shape = (len(files.paths), spec.channels, *spec.stored)
    if path.exists():
        try:
            array = np.load(path, mmap_mode="c")
            if array.shape == shape and array.dtype == np.uint8:
                return torch.from_numpy(array)
        except (OSError, ValueError):
            pass  # unreadable: decode again and replace it
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{prefix}", suffix=".npy.tmp")
    os.close(fd)
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        decode_files(files.paths, spec, name, num_workers, out=torch.from_numpy(array))
        array.flush()
        del array
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for stale in directory.glob(f"{prefix}*.npy"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return torch.from_numpy(np.load(path, mmap_mode="c"))


# -- stream mode -------------------------------------------------------------------------------
class ImageFileDataset(Dataset):
    """Stream mode: images decoded one by one (in ``DataLoader`` workers).

    ``dataset[i]`` or ``dataset[(i, epoch)]`` is ``(uint8 (C, H, W) tensor, label)``: in
    training (``train=True``) a random crop drawn with ``numpy.random.default_rng((seed, epoch,
    i))``, else the deterministic evaluation crop (module docstring). A file that cannot be read
    raises :class:`~chanloss.data.base.DatasetError` naming it.
    """

    def __init__(
        self, files: ImageFiles, spec: ImageSpec, *, train: bool, seed: int, name: str
    ) -> None:
        self.paths = list(files.paths)
        self.labels = files.labels
        self.spec = spec
        self.train = train
        self.seed = seed
        self.name = name

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, int]:
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        path = self.paths[index]
        if self.train:
            rng = np.random.default_rng((self.seed, epoch, index))
            array = train_pixels(path, self.spec, rng, self.name)
        else:
            array = eval_pixels(path, self.spec, self.name)
        image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
        return image, int(self.labels[index])

    def subset(self, indices: Sequence[int] | np.ndarray | Tensor) -> ImageFileDataset:
        """A new data set of the given items (same spec, mode and seed)."""
        idx = np.asarray(indices, dtype=np.int64)
        files = ImageFiles([self.paths[i] for i in idx], self.labels[torch.from_numpy(idx)])
        return ImageFileDataset(files, self.spec, train=self.train, seed=self.seed, name=self.name)

    def with_train(self, train: bool) -> ImageFileDataset:
        """The same files with training (random) or evaluation crops."""
        files = ImageFiles(self.paths, self.labels)
        return ImageFileDataset(files, self.spec, train=train, seed=self.seed, name=self.name)

    def sample_pixels(self, count: int = STATS_SAMPLE) -> Tensor:
        """Evaluation pixels of ``count`` evenly spaced images, uint8 ``(n, C, H, W)`` (for
        channel statistics without decoding the whole set)."""
        n = len(self.paths)
        idx = np.unique(np.linspace(0, n - 1, min(count, n)).round().astype(np.int64))
        pixels = decode_files([self.paths[i] for i in idx], self.spec, self.name)
        left, top, right, bottom = centre_box(pixels.shape[2], pixels.shape[3], self.spec.size)
        return pixels[:, :, top:bottom, left:right]


def decoded_bytes(files: FileSplits) -> int:
    """Host memory that memory mode needs for all splits (one byte per value)."""
    height, width = files.spec.stored
    count = len(files.train.paths) + len(files.test.paths)
    count += len(files.val.paths) if files.val is not None else 0
    return count * files.spec.channels * height * width


def image_spec(
    image_size: int | Sequence[int], resize: int | None, resize_mode: str, colour: str
) -> ImageSpec:
    """The :class:`ImageSpec` of a loader's options (each checked, naming the option)."""
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


def in_memory(lister: Callable[..., FileSplits]) -> Callable[..., Splits]:
    """The in-memory loader of an image-file set (same options as its lister)."""

    @functools.wraps(lister)
    def load(**opts: object) -> Splits:
        return decode_splits(lister(**opts))

    return load
