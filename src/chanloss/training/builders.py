"""Build the parts of a run from its config: device, data, batches, model and losses."""

from __future__ import annotations

import functools
import inspect
import itertools
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from chanloss.data.base import DatasetError, to_float_images
from chanloss.data.files import ImageFileDataset
from chanloss.training.config import ConfigError, TrainConfig

# Datasets held in memory are moved to the accelerator whole when their images (as stored:
# uint8 for the sets decoded from 8-bit files) take less than this.
_DEVICE_CACHE_BYTES = 2 << 30


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} was asked for but CUDA is not available")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ConfigError(
                f"device: {name!r} was asked for but there {'is' if count == 1 else 'are'} "
                f"{count} CUDA device{'' if count == 1 else 's'} (cuda:0 to cuda:{count - 1})"
            )
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global generator other code draws from
    torch.manual_seed(seed)


def build_data(config: TrainConfig) -> Any:
    """The :class:`DataBundle` of ``config.data`` (bad names/options are config errors)."""
    from chanloss.data import build_datasets

    data = config.data
    try:
        return build_datasets(
            data.name,
            root=data.root,
            seed=config.seed,
            val_fraction=data.val_fraction,
            mode=data.mode,
            memory_budget_gb=data.memory_budget_gb,
            cache_dir=data.cache_dir,
            normalize=data.normalize,
            split_seed=data.split_seed,
            folds=data.folds,
            fold=data.fold,
            **data.options,
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"data: {err}") from None


def build_augmentations(config: TrainConfig, bundle: Any, device: torch.device) -> tuple:
    """The (train, eval) batched augmentation modules, on ``device``."""
    from chanloss.data import build_augmentation

    aug = config.data.augment
    resize = tuple(aug.resize) if isinstance(aug.resize, list) else aug.resize
    try:
        train = build_augmentation(
            train=True,
            mean=bundle.mean,
            std=bundle.std,
            crop_padding=aug.crop_padding,
            hflip=aug.hflip,
            resize=resize,
            crop=bundle.crop,
        )
        evaluate = build_augmentation(
            train=False, mean=bundle.mean, std=bundle.std, resize=resize, crop=bundle.crop
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"data.augment: {err}") from None
    return train.to(device), evaluate.to(device)


def build_model(config: TrainConfig, *, num_classes: int, in_channels: int) -> nn.Module:
    """The network of ``config.model``."""
    from chanloss.models import create_model

    try:
        model = create_model(
            config.model.name,
            num_classes=num_classes,
            in_channels=in_channels,
            **config.model.options(),
        )
    except (ValueError, TypeError, ImportError) as err:
        text = " ".join(str(err).split())
        raise ConfigError(f"model: {text if len(text) <= 300 else text[:300] + '...'}") from None
    except (RuntimeError, MemoryError, OverflowError) as err:  # too large for this machine
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(
            f"model: cannot build {config.model.name!r} with {config.model.options()} "
            f"({type(err).__name__}: {first}); expected a model that fits in memory"
        ) from None
    report = getattr(model, "pretrained_report", None)
    if report is not None:
        from chanloss.messages import once
        from chanloss.training.distributed import is_main_process

        adapted = f"; {report['adapted']}" if report["adapted"] else ""
        if is_main_process():
            once(
                f"model: loaded {report['loaded']} tensors of "
                f"{config.model.options()['weights']} ({report['layout']} layout); new: "
                f"{_summarise(report['new'])}; not used from the file: "
                f"{_summarise(report['skipped'])}{adapted}"
            )
    return model


def model_from_checkpoint(
    config: TrainConfig, state: dict[str, Any], *, num_classes: int, in_channels: int
) -> nn.Module:
    """The network of a checkpoint's run, rebuilt from its stored ``config``, before
    ``state["model"]`` is loaded into it.

    The one place where a model is rebuilt from a checkpoint: the checkpoint loader
    (:mod:`chanloss.training.loader`: eval, analyze, predict, export, ``load_model``, tune) and
    ``train --resume`` both call it. A pretrained model's weights file is not read (its tensors
    come from the checkpoint). A checkpoint whose model was changed after it was built (e.g. a
    pruned one, recorded in ``state``) is given that structure here, so that its state dict fits.
    """
    from chanloss.models.pretrained import checkpoint_weights

    with checkpoint_weights():
        model = build_model(config, num_classes=num_classes, in_channels=in_channels)
    if state.get("pruning") is not None:  # written by chanloss prune
        from chanloss.training.checkpoint import apply_pruned_structure

        model = apply_pruned_structure(model, state["pruning"], "the checkpoint")
    return model


def _summarise(keys: list[str]) -> str:
    """``classifier (2 tensors), head (9 tensors)`` from a list of state_dict keys."""
    counts: dict[str, int] = {}
    for key in keys:
        counts[key.split(".")[0]] = counts.get(key.split(".")[0], 0) + 1
    return ", ".join(f"{k} ({n} tensor{'s' if n > 1 else ''})" for k, n in counts.items()) or "none"


@dataclass
class LossSlot:
    """One configured loss with what the trainer needs to call it."""

    index: int
    name: str
    weight: float
    lr: float | None
    loss: nn.Module
    takes_generator: bool
    columns: dict[str, str]  # term name -> metric column name


def build_losses(config: TrainConfig, model: nn.Module, num_classes: int) -> list[LossSlot]:
    """The configured losses, each with its context (classes, channels, embedding size)."""
    from chanloss.losses import create_loss

    context = {
        "num_classes": num_classes,
        "num_channels": int(model.num_features),
        "embedding_dim": int(model.embedding_dim),
    }
    slots: list[LossSlot] = []
    counts: dict[str, int] = {}
    for i, entry in enumerate(config.losses):
        try:
            loss = create_loss(entry.name, context=context, **entry.params())
        except (ValueError, TypeError) as err:
            raise ConfigError(
                f"losses.{i} ({entry.name}): {err}{_channels_hint(config, str(err), context)}"
            ) from None
        counts[entry.name] = counts.get(entry.name, 0) + 1
        prefix = entry.name if counts[entry.name] == 1 else f"{entry.name}{counts[entry.name]}"
        columns = {
            term: prefix if term == entry.name else f"{prefix}_{term}" for term in loss.weights
        }
        takes_generator = "generator" in inspect.signature(loss.terms).parameters
        slots.append(
            LossSlot(i, entry.name, entry.weight, entry.lr, loss, takes_generator, columns)
        )
    return slots


def _channels_hint(config: TrainConfig, text: str, context: dict[str, int]) -> str:
    """Which key sets a loss's ``num_channels`` (the model's feature channels), when the loss
    refused it."""
    if "num_channels" not in text:
        return ""
    channels, classes = context["num_channels"], context["num_classes"]
    where = (
        f"model.feature_channels is {channels}"
        if "feature_channels" in config.model.options()
        else f"model {config.model.name!r} has {channels} feature channels"
    )
    return (
        f"; the feature channels come from the model: {where} and the data has {classes} "
        f"classes, so set model.feature_channels to at least {classes} (a multiple of "
        f"{classes} gives every class as many channels, e.g. {3 * classes})"
    )


def count_parameters(module: nn.Module) -> int:
    """The number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


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
    :class:`~chanloss.training.samplers.RankBatchSampler` (``sampler``: random or
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
        from chanloss.training.samplers import RankBatchSampler

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
                worker_init_fn=functools.partial(_seed_worker, self.seed),
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


def _seed_worker(seed: int, worker_id: int) -> None:
    """A ``DataLoader`` worker: one thread, python/numpy/torch seeded from ``seed`` and its id."""
    torch.set_num_threads(1)
    seed_everything(seed * 1000 + worker_id)


def _last_line(err: Exception) -> str:
    """The message of an error re-raised from a ``DataLoader`` worker (whose text is the
    worker's traceback), without the traceback and the exception's module path."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    return last.removeprefix(prefix)


def run_preprocessing(config: TrainConfig, bundle: Any) -> dict[str, Any]:
    """How an image file becomes this run's model input, as primitives for the checkpoint.

    An image file is read as in evaluation: ``colour`` (``"L"``/``"RGB"``, from the channels),
    brought to ``image_size`` ``[height, width]`` (what the model sees) by ``resize_mode``, or,
    with ``shorter_side`` (the image-file option ``resize``), scaled and centre-cropped as in
    :mod:`chanloss.data.files`; then ``batch_resize`` (``data.augment.resize``) and the
    per-channel ``mean``/``std``. See :class:`chanloss.inference.Preprocessing`.
    """
    channels = int(bundle.in_channels)
    resize = config.data.augment.resize
    if isinstance(resize, int):
        resize = [resize, resize]
    elif isinstance(resize, list) and len(resize) == 1:
        resize = [resize[0], resize[0]]
    shorter = config.data.options.get("resize")
    return {
        "colour": {1: "L", 3: "RGB"}.get(channels),
        "image_size": [int(s) for s in bundle.image_size],
        "resize_mode": str(config.data.options.get("resize_mode", "crop")),
        "shorter_side": int(shorter) if isinstance(shorter, int) else None,
        "batch_resize": None if resize is None else [int(s) for s in resize],
        "mean": [float(m) for m in bundle.mean],
        "std": [float(s) for s in bundle.std],
    }
