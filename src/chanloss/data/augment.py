"""Batched GPU-friendly augmentation with kornia (``kornia.augmentation``).

``build_augmentation`` returns a module applied to whole ``(B, C, H, W)`` float batches on the
batch's device: training mode = ``[Resize] -> [RandomCrop (to crop, with zero padding)] ->
[RandomHorizontalFlip] -> Normalize``; evaluation mode (``train=False``) = ``[Resize] ->
[centre crop to crop] -> Normalize`` only, which is deterministic. kornia draws its random parameters from torch's
global (CPU) random number generator, so ``torch.manual_seed`` makes the training
augmentation reproducible, on any device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from chanloss.core.validation import check_bool, check_float, check_int, check_size


class Augmentation(nn.Module):
    """kornia ops in sequence; ``RandomCrop`` is built for each input size it meets.

    ``mean`` and ``std`` are buffers: ``.to(device)`` moves them and hands them to
    ``kornia.augmentation.Normalize``, so no statistics are copied to the device per batch.
    """

    def __init__(
        self,
        *,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int,
        hflip: bool,
        resize: tuple[int, int] | None,
        crop: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.train_mode = train
        self.crop = crop
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.resize = resize
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.resize_op = K.Resize(resize, antialias=True) if resize is not None else None
        self.flip_op = K.RandomHorizontalFlip(p=0.5) if train and hflip else None
        self.normalize = K.Normalize(mean=self.mean, std=self.std)
        self._crops: dict[tuple[int, int], nn.Module] = {}

    def _apply(self, fn: Callable, recurse: bool = True) -> Augmentation:
        super()._apply(fn, recurse)
        self.normalize.flags["mean"] = self.mean
        self.normalize.flags["std"] = self.std
        return self

    def _crop(self, size: tuple[int, int]) -> nn.Module:
        if size not in self._crops:
            self._crops[size] = K.RandomCrop(size, padding=self.crop_padding)
        return self._crops[size]

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
            got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"augmentation expects a float (B, C, H, W) batch, got {got}")
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"augmentation was built for {self.mean.shape[0]} channels (mean/std), got a "
                f"batch of shape {tuple(x.shape)}"
            )
        if self.resize_op is not None:
            x = self.resize_op(x)
        size = (x.shape[2], x.shape[3])
        target = self.crop or size
        if self.train_mode and (self.crop_padding > 0 or target != size):
            x = self._crop(target)(x)
        elif target != size:  # the centre crop of chanloss.data.files.centre_box
            top, left = (size[0] - target[0]) // 2, (size[1] - target[1]) // 2
            x = x[:, :, top : top + target[0], left : left + target[1]]
        if self.flip_op is not None:
            x = self.flip_op(x)
        return self.normalize(x)

    def extra_repr(self) -> str:
        return (
            f"train={self.train_mode}, crop_padding={self.crop_padding}, hflip={self.hflip}, "
            f"resize={self.resize}, crop={self.crop}"
        )


def build_augmentation(
    *,
    train: bool,
    mean: Sequence[float],
    std: Sequence[float],
    crop_padding: int = 0,
    hflip: bool = False,
    resize: tuple[int, int] | None = None,
    crop: int | tuple[int, int] | None = None,
) -> nn.Module:
    """The augmentation pipeline of the module docstring, as an ``nn.Module``.

    ``crop_padding``: zero padding on every side before a random crop back to the input size
    (CIFAR: 4); ``hflip``: random horizontal flips with probability 0.5; ``resize``: target
    ``(height, width)`` (or an int) applied first, in both modes. ``mean``/``std``: per channel.
    """
    train = check_bool("train", train)
    mean_t = _per_channel("mean", mean)
    std_t = _per_channel("std", std)
    if len(mean_t) != len(std_t):
        raise ValueError(
            f"mean and std must have one value per channel, got {len(mean_t)} and {len(std_t)}"
        )
    for i, s in enumerate(std_t):
        check_float(f"std[{i}]", s, low=0.0, low_inclusive=False)
    size = None if resize is None else check_size("resize", resize)
    return Augmentation(
        train=train,
        mean=mean_t,
        std=std_t,
        crop_padding=check_int("crop_padding", crop_padding, low=0),
        hflip=check_bool("hflip", hflip),
        resize=size,
        crop=None if crop is None else check_size("crop", crop),
    )


def _per_channel(name: str, values: object) -> tuple[float, ...]:
    if isinstance(values, Tensor):
        values = values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ValueError(f"{name} must be a non-empty sequence of floats, got {values!r}")
    return tuple(check_float(f"{name}[{i}]", v) for i, v in enumerate(values))
