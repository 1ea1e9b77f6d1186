"""In-memory image data sets and batched kornia augmentation.

``build_datasets(name, root=..., seed=..., val_fraction=..., **opts) -> DataBundle`` loads one
of :data:`DATASETS` (digits, mnist5k, finegrained, cifar10, cifar100, cub200, image_folder) as
:class:`TensorImageDataset` splits whose ``.images`` ``(N, C, H, W)`` and ``.labels`` ``(N,)``
int64 tensors can be batched directly. ``.images`` is uint8 ``0..255`` for the sets decoded from
8-bit files (cifar10, cifar100, cub200, image_folder: a quarter of the memory) and float32 in
``[0, 1]`` for the others; :func:`to_float_images` turns a batch of either into float32 in
``[0, 1]`` (``dataset[i]`` does so per item). ``build_augmentation`` builds the per-batch
augmentation and normalisation, which expects float batches. Image-file sets can instead be
streamed (``mode="stream"``: :class:`~chanloss.data.files.ImageFileDataset`, decoded per item
in ``DataLoader`` workers) or cached on disk; see :mod:`chanloss.data.files`.

Each data set is one module here that registers its loader (``@register_dataset("name")``; an
image-file set also its lister, ``@register_files``); importing the package imports every
module of it, so a new data set is one new file.
"""

from chanloss.core.discovery import import_submodules
from chanloss.data.augment import Augmentation, build_augmentation
from chanloss.data.base import (
    DATASETS,
    FILE_SETS,
    DataBundle,
    DatasetError,
    DatasetFileNotFoundError,
    Splits,
    TensorImageDataset,
    channel_stats,
    dataset_options,
    register_dataset,
    to_float_images,
)
from chanloss.data.build import build_datasets
from chanloss.data.files import ImageFileDataset, ImageSpec
from chanloss.data.image_folder import IMAGE_EXTENSIONS, has_own_val
from chanloss.data.synthetic import make_finegrained

__all__ = [
    "DATASETS",
    "FILE_SETS",
    "IMAGE_EXTENSIONS",
    "ImageFileDataset",
    "ImageSpec",
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
    "has_own_val",
    "make_finegrained",
    "register_dataset",
    "to_float_images",
]

# Import every module of this package, so that a data set added as one new file here is
# registered with no other edit.
import_submodules(__name__, __path__)
