"""Reading the CIFAR python pickles (``cifar10``, ``cifar100``) without running their code.

The pixels are kept as uint8 ``(N, 3, 32, 32)`` tensors ``0..255``, as stored
(:func:`~chanloss.data.base.to_float_images` scales a batch to float32 in ``[0, 1]``).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from chanloss.core.errors import UnsafePickleError
from chanloss.data.base import DatasetError, DatasetFileNotFoundError, Splits
from chanloss.data.layout import find_base, need_root

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


def load_cifar(
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
    """The splits of a CIFAR set under ``root``: the pickles ``train_files`` and ``test_file``
    of ``folder``, class names under ``names_key`` of ``meta_file``, labels under ``label_key``."""
    base = find_base(need_root(root, name, f"{folder}/"), folder, train_files[0], name)
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
