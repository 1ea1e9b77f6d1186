"""The loaders of the real data sets under their former common home; each now lives in a module
of its own (:mod:`~chanloss.data.digits`, :mod:`~chanloss.data.mnist5k`,
:mod:`~chanloss.data.cifar10`, :mod:`~chanloss.data.cifar100`, :mod:`~chanloss.data.cub200`,
:mod:`~chanloss.data.image_folder`), which registers itself."""

from chanloss.core.errors import UnsafePickleError
from chanloss.data.base import SPLIT_SEED
from chanloss.data.cifar10 import load_cifar10
from chanloss.data.cifar100 import load_cifar100
from chanloss.data.cub200 import list_cub200, load_cub200
from chanloss.data.digits import load_digits
from chanloss.data.files import decode_splits
from chanloss.data.image_folder import (
    IMAGE_EXTENSIONS,
    has_own_val,
    list_image_folder,
    load_image_folder,
)
from chanloss.data.mnist5k import load_mnist5k

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_SEED",
    "UnsafePickleError",
    "decode_splits",
    "has_own_val",
    "list_cub200",
    "list_image_folder",
    "load_cifar10",
    "load_cifar100",
    "load_cub200",
    "load_digits",
    "load_image_folder",
    "load_mnist5k",
]
