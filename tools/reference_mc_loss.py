"""MC-Loss with the program structure of the authors' code, as the benchmark's baseline.

PRIS-CV/Mutual-Channel-Loss (``CUB-200-2011.py``: ``Mask``, ``supervisor``; ``my_pooling.py``:
``my_MaxPool2d``) computes the loss like this on every training step:

- the channel-wise attention mask is built in Python: for each class a ``[1, 1, 0]``-style list
  is shuffled with ``random.shuffle`` and appended, the list is repeated for every sample, turned
  into a numpy array and copied to the features' device;
- cross-channel pooling transposes the feature map (``transpose(3, 1)``), runs a 2-d max (or
  average) pooling with kernel ``(1, cnum)`` and transposes back with ``.contiguous()``; the
  pooling modules (``my_MaxPool2d``, ``nn.AvgPool2d``) are constructed inside the forward.

This file re-implements that structure (not the authors' text) for equal group sizes
(``C = K * cnum``, as in their VGG16 script), so that ``bench_mc_loss.py`` measures what the
original program structure costs. It is not part of the library.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ChannelPool2d(nn.Module):
    """``my_MaxPool2d`` / ``my_AvgPool2d``: pool over channels by transposing them to the last
    axis, running a 2-d pooling with kernel ``(1, cnum)`` and transposing back."""

    def __init__(self, kernel_size: tuple[int, int], stride: tuple[int, int], mode: str) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.mode = mode

    def forward(self, input: Tensor) -> Tensor:
        input = input.transpose(3, 1)
        if self.mode == "max":
            input = F.max_pool2d(input, self.kernel_size, self.stride)
        else:
            input = F.avg_pool2d(input, self.kernel_size, self.stride)
        return input.transpose(3, 1).contiguous()


def authors_mask(
    nb_batch: int, cnum: int, num_classes: int, keep: int, device: torch.device
) -> Tensor:
    """``Mask``: shuffle a ``[1] * keep + [0] * (cnum - keep)`` list once per class."""
    foo = [1] * keep + [0] * (cnum - keep)
    bar: list[int] = []
    for _ in range(num_classes):
        random.shuffle(foo)
        bar += foo
    rows = [bar for _ in range(nb_batch)]
    arr = np.array(rows).astype("float32")
    arr = arr.reshape(nb_batch, num_classes * cnum, 1, 1)
    return torch.from_numpy(arr).to(device)


def supervisor(
    x: Tensor,
    targets: Tensor,
    *,
    num_classes: int,
    keep: int,
    pool: str = "max",
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``(dis, div)`` as the authors' ``supervisor`` computes them (``loss_1``, ``loss_2``).

    ``mask`` ``(B, C, 1, 1)`` replaces the drawn one (for checking against the library).
    """
    b, c, h, w = x.shape
    cnum = c // num_classes
    if mask is None:
        mask = authors_mask(b, cnum, num_classes, keep, x.device)

    branch = x.reshape(b, c, h * w)
    branch = F.softmax(branch, 2)
    branch = branch.reshape(b, c, h, w)
    branch = ChannelPool2d(kernel_size=(1, cnum), stride=(1, cnum), mode="max")(branch)
    branch = branch.reshape(b, branch.size(1), branch.size(2) * branch.size(3))
    loss_2 = 1.0 - 1.0 * torch.mean(torch.sum(branch, 2)) / cnum

    branch_1 = x * mask
    branch_1 = ChannelPool2d(kernel_size=(1, cnum), stride=(1, cnum), mode=pool)(branch_1)
    branch_1 = nn.AvgPool2d(kernel_size=(h, w))(branch_1)
    branch_1 = branch_1.view(branch_1.size(0), -1)
    loss_1 = nn.CrossEntropyLoss()(branch_1, targets)
    return loss_1, loss_2


def reference_mc_loss(
    x: Tensor,
    targets: Tensor,
    *,
    num_classes: int,
    keep: int,
    alpha: float = 1.5,
    beta: float = 20.0,
    pool: str = "max",
    mask: Tensor | None = None,
) -> Tensor:
    """``alpha * loss_1 + beta * loss_2`` (the MC part of the authors' training loss)."""
    dis, div = supervisor(x, targets, num_classes=num_classes, keep=keep, pool=pool, mask=mask)
    return alpha * dis + beta * div
