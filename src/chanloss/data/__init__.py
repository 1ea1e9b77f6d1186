"""In-memory image data sets and batched kornia augmentation.

``build_datasets(name, root=..., seed=..., val_fraction=..., **opts) -> DataBundle`` loads one
of :data:`DATASETS` (digits, mnist5k, finegrained, cifar10, cifar100, cub200, image_folder) as
:class:`TensorImageDataset` splits whose ``.images`` ``(N, C, H, W)`` float32 in ``[0, 1]`` and
``.labels`` ``(N,)`` int64 tensors can be batched directly; ``build_augmentation`` builds the
per-batch augmentation and normalisation.
"""

from chanloss.data import datasets as _datasets  # noqa: F401  (registers the loaders)
from chanloss.data import synthetic as _synthetic  # noqa: F401
from chanloss.data.augment import Augmentation, build_augmentation
from chanloss.data.base import (
    DATASETS,
    DataBundle,
    DatasetError,
    DatasetFileNotFoundError,
    Splits,
    TensorImageDataset,
    build_datasets,
    channel_stats,
    dataset_options,
    register_dataset,
)
from chanloss.data.synthetic import make_finegrained

__all__ = [
    "DATASETS",
    "Augmentation",
    "DataBundle",
    "DatasetError",
    "DatasetFileNotFoundError",
    "Splits",
    "TensorImageDataset",
    "build_augmentation",
    "build_datasets",
    "channel_stats",
    "dataset_options",
    "make_finegrained",
    "register_dataset",
]
