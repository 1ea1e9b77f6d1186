"""The batch feeder: :class:`Batches` hands the loop ``(images, labels)`` batches on the device."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from chanloss.core.errors import ConfigError
from chanloss.data.base import DatasetError, to_float_images
from chanloss.data.files import ImageFileDataset
from chanloss.run.seeding import seed_worker

__all__ = ["Batches"]

# Datasets held in memory are moved to the accelerator whole when their images (as stored:
# uint8 for the sets decoded from 8-bit files) take less than this.
_DEVICE_CACHE_BYTES = 2 << 30


class Batches:
    """Batches ``(images, labels)`` of a dataset, on the device.

    Datasets held in memory (``.images`` / ``.labels`` tensors) are indexed directly (moved
    to the accelerator once when they fit, in their stored dtype); a uint8 batch is moved to the
    device first and converted to float32 in ``[0, 1]`` there (a quarter of the host-to-device
    traffic). Others (stream mode, :class:`~chanloss.data.files.ImageFileDataset`) go through a
    ``DataLoader`` with ``workers`` persistent processes (pinned memory on CUDA; each worker
    seeded from ``seed`` and its id, and the random crops from ``(seed, epoch, index)``, so a
    run repeats whatever the number of workers); a file that cannot be read stops the run
    with a :class:`ConfigError` naming it, and the workers are shut down. The batches come from a
    :class:`~chanloss.run.samplers.RankBatchSampler` (``sampler``: random or
    class_balanced; with ``world_size`` processes, the share of ``rank``); those of epoch ``e``
    depend only on the seed and ``e``, so a resumed run sees the same batches as an
    uninterrupted one.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        batch_size: int,
        device: torch.device,
        train: bool,
        seed: int = 0,
        workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        sampler: str = "random",
        samples_per_class: int = 4,
    ) -> None:
        from chanloss.run.samplers import RankBatchSampler

        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.seed = seed
        self.workers = workers
        self._loader: Any = None
        self.size = len(dataset)
        self.in_memory = isinstance(getattr(dataset, "images", None), Tensor) and isinstance(
            getattr(dataset, "labels", None), Tensor
        )
        labels = getattr(dataset, "labels", getattr(dataset, "targets", None))
        self.sampler = RankBatchSampler(
            self.size,
            batch_size=batch_size,
            train=train,
            seed=seed,
            rank=rank,
            world_size=world_size,
            sampler=sampler,
            samples_per_class=samples_per_class,
            labels=torch.as_tensor(labels) if sampler == "class_balanced" and train else None,
        )
        if self.in_memory:
            images, labels = dataset.images, dataset.labels.long()
            if (
                device.type != "cpu"
                and images.numel() * images.element_size() < _DEVICE_CACHE_BYTES
            ):
                images, labels = images.to(device), labels.to(device)
            self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of epoch ``epoch`` (shuffled when training), from batch ``start`` on
        (a resumed epoch: the batches before it are neither indexed nor decoded)."""
        self.sampler.set_epoch(epoch)
        if self.in_memory:
            yield from self._memory_batches(self.sampler.index_batches(epoch)[start:])
        else:
            yield from self._loader_batches(epoch, start)

    def _memory_batches(self, batches: Tensor | list[slice]) -> Iterator[tuple[Tensor, Tensor]]:
        on_device = self.images.device == self.device
        if isinstance(batches, Tensor) and on_device:
            batches = batches.to(self.device)
        non_blocking = self.device.type == "cuda"
        for idx in batches:
            x, y = self.images[idx], self.labels[idx]
            if not on_device:
                x = x.to(self.device, non_blocking=non_blocking)
                y = y.to(self.device, non_blocking=non_blocking)
            yield to_float_images(x), y

    def _loader_batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        if self._loader is None:
            tagged = isinstance(self.dataset, ImageFileDataset)
            self._batch_sampler = _EpochTagged(self.sampler, tagged)
            self._loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_sampler=self._batch_sampler,
                num_workers=self.workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0,
                worker_init_fn=functools.partial(seed_worker, self.seed),
                generator=torch.Generator().manual_seed(self.seed),
            )
        self._batch_sampler.epoch, self._batch_sampler.start = epoch, start
        non_blocking = self.device.type == "cuda"
        try:
            for x, y in self._loader:
                x = x.to(self.device, non_blocking=non_blocking)
                yield (
                    to_float_images(x) if x.dtype == torch.uint8 else x,
                    torch.as_tensor(y).long().to(self.device, non_blocking=non_blocking),
                )
        except DatasetError as err:
            self.close()
            raise ConfigError(f"data: {_last_line(err)}") from None

    def close(self) -> None:
        """Shut the ``DataLoader`` workers down (they are started again when needed)."""
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


class _EpochTagged:
    """The sampler's batches from batch ``start`` on; with ``tag``, of ``(index, epoch)`` pairs
    (the epoch reaches the workers' random crops)."""

    def __init__(self, sampler: Iterable[list[int]], tag: bool) -> None:
        self.sampler = sampler
        self.tag = tag
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        return len(self.sampler) - self.start  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[tuple[int, int]] | list[int]]:
        epoch = self.epoch
        for batch in itertools.islice(self.sampler, self.start, None):
            yield [(int(i), epoch) for i in batch] if self.tag else batch


def _last_line(err: Exception) -> str:
    """The message of an error re-raised from a ``DataLoader`` worker (whose text is the
    worker's traceback), without the traceback and the exception's module path."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    return last.removeprefix(prefix)
