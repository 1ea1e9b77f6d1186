"""The ``auto`` choices of an image folder (``image_size: auto``, ``colour: auto``), made from
the headers of a sample of its training images: Pillow reads no pixels for them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from chanloss.core.errors import DatasetError
from chanloss.core.messages import once

__all__ = ["auto_size", "probe_images"]

_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_PROBE = 512  # training images whose headers an ``auto`` choice reads (evenly spread)
_EXIF_ORIENTATION = 0x0112  # 5 to 8: the image is shown turned by a quarter (sides swapped)


def probe_images(
    paths: list[Path], size: object, colour: str | None, name: str
) -> tuple[object, str]:
    """Choose the ``auto`` image size and colour from the headers of up to 512 training images
    (Pillow reads no pixels for this) and print the choice (see :func:`auto_size`)."""
    from PIL import Image

    step = max(1, len(paths) // _PROBE)
    sizes: list[tuple[int, int]] = []
    grey = True
    first_error = None
    for path in paths[::step][:_PROBE]:
        try:
            with Image.open(path) as image:
                turned = image.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8)
                sizes.append((image.width, image.height) if turned else image.size[::-1])
                grey = grey and image.mode in _GREY_MODES
        except (OSError, ValueError) as err:  # decoding names it later; the others decide
            first_error = first_error or f"{path}: {type(err).__name__}: {err}"
    if not sizes:
        raise DatasetError(f"{name}: cannot read image {first_error}")
    chosen = []
    if size is None:
        size, how = auto_size(sizes)
        chosen.append(f"image_size auto -> {how}")
    if colour is None:
        colour = "L" if grey else "RGB"
        chosen.append(
            f"colour auto -> {colour} ("
            + ("every sampled image is grey" if grey else "colour images among them")
            + ")"
        )
    once(f"{name}: {'; '.join(chosen)}")  # the same for every run of a command: printed once
    return size, colour


def auto_size(sizes: list[tuple[int, int]]) -> tuple[list[int], str]:
    """The ``auto`` size of images of ``sizes`` ``(height, width)``, and how it was chosen.

    One size for all: that size. Mixed sizes: the median height and the median width, each
    rounded to a multiple of 8 (at least 8). A median, not the most common size: on photos
    of many sizes the most common one may be held by a handful of images and flip with any
    small change to the folder; the median moves little."""
    n = len(sizes)
    if len(set(sizes)) == 1:
        height, width = sizes[0]
        return [height, width], f"{height}x{width} (all {n} sampled training images)"
    heights = sorted(h for h, _ in sizes)
    widths = sorted(w for _, w in sizes)
    mid_h, mid_w = float(np.median(heights)), float(np.median(widths))
    height, width = (max(8, 8 * round(m / 8)) for m in (mid_h, mid_w))
    how = (
        f"{height}x{width} (the median of {n} sampled training images, {mid_h:g}x{mid_w:g}, "
        f"rounded to a multiple of 8; their sizes vary: heights {heights[0]}-{heights[-1]}, "
        f"widths {widths[0]}-{widths[-1]} px; set data.options.image_size to choose)"
    )
    return [height, width], how
