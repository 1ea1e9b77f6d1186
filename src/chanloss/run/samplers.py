"""Per-rank index batches: shuffled (DistributedSampler-like) or class-balanced (P x M).

:class:`RankBatchSampler` yields the index batches of one process (rank) for one epoch. The
batches of epoch ``e`` depend only on ``(seed, e)`` and the rank, so a resumed run sees the
same batches as an uninterrupted one, and all ranks agree on the epoch's plan without
communicating. It serves both data paths of the trainer: :meth:`RankBatchSampler.index_batches`
gives tensors (or slices) to index in-memory tensors with, and iterating it gives lists of ints,
so it can be a ``DataLoader``'s ``batch_sampler`` (call :meth:`~RankBatchSampler.set_epoch`
first, as with ``DistributedSampler``).

``sampler="random"`` (training): one permutation of the dataset per epoch; with ``W`` ranks
its first ``W * (N // W)`` entries are dealt out in turn (rank ``r`` gets entries ``r, r + W,
...``), as ``DistributedSampler(drop_last=True)`` does, and each rank cuts its share into
batches of ``batch_size`` (the last incomplete batch is dropped when a rank has more than one
batch). Step ``k`` of the ``W`` ranks together then covers exactly the samples of batch ``k``
of a single process with batch size ``W * batch_size``.

``sampler="class_balanced"`` (training): every batch holds ``P = batch_size // M`` different
classes with ``M = samples_per_class`` samples each (the "P x M" batches of Hermans et al.,
"In Defense of the Triplet Loss for Person Re-Identification", 2017), so that pair losses such
as CC-Loss see same-class pairs in every batch. Each epoch, every class's samples are shuffled
and cut into chunks of ``M`` (a class keeps ``n_c // M`` chunks, at most one per batch of the
epoch); the classes are put in a random order and their chunks dealt round-robin into ``G``
batches, so that a batch never holds two chunks of one class. Every sample appears at most once
per epoch, hence the ranks' batches are disjoint. The ``G`` batches are shuffled and dealt to
the ranks in turn; every rank gets ``G // W`` of them.

Evaluation (``train=False``): no shuffling and no padding; with ``W`` ranks, rank ``r`` gets the
contiguous block ``[r N / W, (r + 1) N / W)``, so summing correct predictions and counts over the
ranks scores every test sample exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

SAMPLERS = ("random", "class_balanced")

__all__ = ["SAMPLERS", "RankBatchSampler", "class_balanced_batches", "shuffled_batches"]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def shuffled_batches(
    size: int, *, batch_size: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1
) -> Tensor:
    """The ``(num_batches, batch_size)`` index batches of ``rank`` for a shuffled epoch."""
    per_rank = size // world_size
    if per_rank < 1:
        raise ValueError(
            f"the training set must have at least one sample per process: expected >= "
            f"{world_size} samples, got {size}"
        )
    order = torch.randperm(size, generator=_epoch_generator(seed, epoch))
    mine = order[rank : per_rank * world_size : world_size]
    if per_rank <= batch_size:
        return mine.view(1, per_rank)
    full = per_rank // batch_size
    return mine[: full * batch_size].view(full, batch_size)


def _balanced_batch_count(chunks: Tensor, classes_per_batch: int) -> int:
    """The largest ``G`` with ``sum(min(chunks, G)) >= G * P`` (one chunk per class and batch)."""
    g = int(chunks.sum()) // classes_per_batch
    while g > 0:
        fit = int(chunks.clamp(max=g).sum()) // classes_per_batch
        if fit >= g:
            break
        g = fit
    return g


def class_balanced_batches(
    labels: Tensor,
    *,
    batch_size: int,
    samples_per_class: int,
    epoch: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> Tensor:
    """The ``(num_batches, batch_size)`` P x M index batches of ``rank`` for one epoch.

    ``labels`` are the training set's integer class labels. Within a batch the samples are
    grouped by class (``M`` consecutive indices per class). Raises ``ValueError`` when the
    training set cannot fill one batch per rank with ``P`` classes of ``M`` samples.
    """
    m = samples_per_class
    p = batch_size // m
    if m < 2 or p * m != batch_size:
        raise ValueError(
            f"class-balanced batches need samples_per_class >= 2 dividing batch_size, got "
            f"samples_per_class={m} and batch_size={batch_size}"
        )
    labels = labels.detach().to("cpu", torch.long).flatten()
    counts = torch.bincount(labels)
    chunks_all = counts // m
    usable = int((chunks_all > 0).sum())
    if usable < p:
        raise ValueError(
            f"class-balanced batches of batch_size={batch_size} need P={p} classes with at "
            f"least samples_per_class={m} samples each, got {usable} such classes"
        )
    g = _balanced_batch_count(chunks_all, p)
    steps = g // world_size
    if steps < 1:
        raise ValueError(
            f"the training set fills {g} class-balanced batch(es) of {p} classes x {m} samples, "
            f"fewer than the {world_size} process(es) need (one batch each)"
        )
    gen = _epoch_generator(seed, epoch)
    num_classes = counts.numel()
    class_order = torch.randperm(num_classes, generator=gen)
    position = torch.empty_like(class_order)
    position[class_order] = torch.arange(num_classes)
    # Samples grouped by class (classes in random order), in random order within each class.
    keys = position[labels].double() + torch.rand(
        labels.numel(), generator=gen, dtype=torch.float64
    )
    grouped = torch.argsort(keys)
    seg_counts = counts[class_order]
    seg_start = torch.cumsum(seg_counts, 0) - seg_counts
    chunks = chunks_all.clamp(max=g)[class_order]
    chunk_class = torch.repeat_interleave(torch.arange(num_classes), chunks)
    first_chunk = torch.cumsum(chunks, 0) - chunks
    chunk_rank = torch.arange(chunk_class.numel()) - first_chunk[chunk_class]
    starts = (seg_start[chunk_class] + chunk_rank * m)[: g * p]
    members = grouped[starts[:, None] + torch.arange(m)]  # (g * p, m)
    # Chunk t goes to batch t % g: a class's (at most g) consecutive chunks land in different
    # batches.
    batches = members.view(p, g, m).transpose(0, 1).reshape(g, p * m)
    dealt = batches[torch.randperm(g, generator=gen)[: steps * world_size]]
    return dealt.view(steps, world_size, p * m)[:, rank].contiguous()


class RankBatchSampler(torch.utils.data.Sampler):
    """Index batches of one rank, per epoch (see the module docstring for the schemes).

    ``labels`` (the training labels) is needed for ``sampler="class_balanced"`` only. Iterating
    gives the batches of the epoch set by :meth:`set_epoch` as lists of ints.
    """

    def __init__(
        self,
        size: int,
        *,
        batch_size: int,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        sampler: str = "random",
        samples_per_class: int = 4,
        labels: Tensor | None = None,
    ) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.size = size
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.sampler = sampler if train else "random"
        self.samples_per_class = samples_per_class
        self.labels = labels
        self.epoch = 0
        if self.sampler == "class_balanced" and labels is None:
            raise ValueError(
                "class_balanced sampling needs the training labels (a dataset with a .labels "
                "or .targets tensor)"
            )
        self._length = len(self.index_batches(0)) if train else self._eval_length()

    def _eval_bounds(self) -> tuple[int, int]:
        return (
            self.rank * self.size // self.world_size,
            (self.rank + 1) * self.size // self.world_size,
        )

    def _eval_length(self) -> int:
        lo, hi = self._eval_bounds()
        return -(-(hi - lo) // self.batch_size)

    def __len__(self) -> int:
        return self._length

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose batches iteration yields (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def index_batches(self, epoch: int | None = None) -> Tensor | list[slice]:
        """The epoch's batches: a ``(num_batches, batch_size)`` tensor, or slices (evaluation)."""
        epoch = self.epoch if epoch is None else epoch
        if not self.train:
            lo, hi = self._eval_bounds()
            return [slice(s, min(hi, s + self.batch_size)) for s in range(lo, hi, self.batch_size)]
        if self.sampler == "class_balanced":
            assert self.labels is not None
            return class_balanced_batches(
                self.labels,
                batch_size=self.batch_size,
                samples_per_class=self.samples_per_class,
                epoch=epoch,
                seed=self.seed,
                rank=self.rank,
                world_size=self.world_size,
            )
        return shuffled_batches(
            self.size,
            batch_size=self.batch_size,
            epoch=epoch,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
        )

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.index_batches()
        if isinstance(batches, list):
            for s in batches:
                yield list(range(s.start, s.stop))
        else:
            yield from batches.tolist()
