"""All-gather with autograd for losses computed on the global batch (torch.distributed only).

A loss that compares samples with each other (CC-Loss) sees more pairs when every rank works
on the batch of all ranks. :func:`all_gather_with_grad` concatenates a tensor's per-rank
batches in rank order on every rank, so every rank computes the same global loss. Its
backward returns the rows of the incoming gradient that belong to the local rank, with no
reduction: every rank holds an identical copy of the global loss, so the gradient it sees
w.r.t. the gathered tensor is already the global one and the local rows are this rank's share.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """The size of the default process group, 1 when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def is_distributed() -> bool:
    """True when a default process group with more than one rank is initialised."""
    return world_size() > 1


def check_equal_batch_sizes(batch_size: int, device: torch.device) -> None:
    """Raise ``ValueError`` on every rank if the ranks' batch sizes differ.

    ``all_gather`` needs the same batch size on every rank. This check costs one small
    collective and a device-to-host copy of ``world_size`` integers; all ranks receive the same
    sizes, so either all of them raise or none does (no rank is left waiting in a collective).
    """
    sizes = torch.tensor([batch_size], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(sizes) for _ in range(world_size())]
    dist.all_gather(gathered, sizes)
    per_rank = [int(s) for s in torch.cat(gathered).cpu()]
    if len(set(per_rank)) > 1:
        raise ValueError(
            "all-gathering the batch needs the same batch size on every rank: expected "
            f"{per_rank[0]} on all {len(per_rank)} ranks, got per-rank sizes {per_rank} "
            "(use a DistributedSampler, which pads every rank to the same number of samples, "
            "or drop_last=True)"
        )


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        rank = dist.get_rank()
        ctx.rows = (rank * x.shape[0], (rank + 1) * x.shape[0])
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        start, stop = ctx.rows
        return grad[start:stop]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` of every rank along dimension 0, in rank order (differentiable).

    Every rank must pass a tensor of the same shape (see :func:`check_equal_batch_sizes`).
    The gradient flowing back to ``x`` is the slice of the gathered tensor's gradient for this
    rank's rows; no all-reduce is done, which is correct when every rank computes the same
    function of the gathered tensor. Without a process group of more than one rank, ``x`` is
    returned unchanged.
    """
    if not is_distributed():
        return x
    return _AllGather.apply(x)


def all_gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (e.g. integer labels) of every rank along dimension 0, in rank order."""
    if not is_distributed():
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)
