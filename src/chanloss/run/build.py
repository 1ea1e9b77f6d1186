"""Build once: everything a run needs, from its config, handed to the loop.

One path, in a fixed order (it decides what the seeded generators produce):
:func:`build_eval_parts` makes the device, seeds, data, model (rebuilt by
:func:`~chanloss.run.builders.model_from_checkpoint` when the run continues from or is
evaluated from a checkpoint), the losses (one
:class:`~chanloss.losses.objective.MultipleLosses`), the per-rank seeds, the augmentation and
the evaluation batches: what evaluating a model needs (:class:`EvalParts`, no optimiser).
:func:`build_run` adds what training needs (:class:`TrainParts`): the DDP wrapping, the
training batches, the optimiser and its schedule, the AMP scaler and the losses' generator.
The process group is opened before (``train`` holds it for the run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from chanloss.config import TrainConfig
from chanloss.core.errors import ConfigError
from chanloss.losses.objective import MultipleLosses
from chanloss.run.batches import Batches
from chanloss.run.builders import (
    LossSlot,
    build_augmentations,
    build_data,
    build_losses,
    build_model,
    check_image_size,
    combine_losses,
    model_from_checkpoint,
    preflight,
    resolve_device,
)
from chanloss.run.distributed import get_rank, get_world_size, local_device, log
from chanloss.run.optim import build_optimizer, build_scheduler
from chanloss.run.seeding import seed_everything, seed_rank

__all__ = [
    "EvalParts",
    "ModelWithLosses",
    "TrainParts",
    "build_eval_parts",
    "build_run",
    "describe_data",
    "wrap_for_training",
]


@dataclass
class EvalParts:
    """A run's model, losses and evaluation batches (:func:`build_eval_parts`)."""

    config: TrainConfig  # with the image size chosen by ``image_size: auto``, if any
    device: torch.device
    data: Any  # the DataBundle: train / val / test splits, classes, channels, statistics
    model: nn.Module
    slots: list[LossSlot]
    losses: MultipleLosses
    train_aug: nn.Module
    eval_aug: nn.Module
    eval_batches: dict[str, Batches]
    amp_dtype: torch.dtype


@dataclass
class TrainParts:
    """What training adds to the :class:`EvalParts` (:func:`build_run`)."""

    model: nn.Module  # the EvalParts' model, with SyncBatchNorm when distributed.sync_bn
    step_module: nn.Module  # model + losses in one module (DDP-wrapped with several ranks)
    world_size: int
    train_batches: Batches
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # the losses' generator (MC-Loss's channel masks)


def build_eval_parts(
    config: TrainConfig,
    *,
    evaluate_test: bool = True,
    checkpoint_state: dict[str, Any] | None = None,
    announce: bool = False,
    data: Any = None,
) -> EvalParts:
    """The model, losses and evaluation batches of a run of ``config`` (no optimiser).

    ``evaluate_test=False`` builds no test batches; ``checkpoint_state`` (the checkpoint the
    run continues from, or is evaluated from) rebuilds the model as that checkpoint's model
    (its weights are not loaded here); ``announce`` prints a line before and after loading the
    data; ``data`` is a data bundle already loaded for this config (by ``build_data``), used
    instead of loading it again.
    """
    device = local_device(resolve_device(config.device))
    seed_everything(config.seed)
    preflight(config)  # what the config alone decides fails before the data is loaded
    if data is None:
        data = _load_data(config, announce)
    shape = {"num_classes": data.num_classes, "in_channels": data.in_channels}
    check_image_size(config, image_size=tuple(data.image_size), **shape)
    if checkpoint_state is None:
        model = build_model(config, **shape).to(device)
    else:  # resumed or loaded: rebuilt as the checkpoint's model was
        model = model_from_checkpoint(config, checkpoint_state, **shape).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    slots = build_losses(config, model, data.num_classes)
    losses = combine_losses(slots, get_world_size()).to(device)
    seed_rank(config.seed)
    train_aug, eval_aug = build_augmentations(config, data, device)
    eval_bs = config.eval_batch_size or 2 * config.batch_size
    eval_batches = {
        split: Batches(
            ds,
            batch_size=eval_bs,
            device=device,
            train=False,
            workers=config.workers,
            rank=get_rank(),
            world_size=get_world_size(),
        )
        for split, ds in (("val", data.val), ("test", data.test))
        if ds is not None and (split != "test" or evaluate_test)
    }
    if data.chosen:  # image_size: auto -> the size chosen, in config.yaml and checkpoints
        options = {**config.data.options, **data.chosen}
        config = config.model_copy(
            update={"data": config.data.model_copy(update={"options": options})}
        )
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return EvalParts(
        config, device, data, model, slots, losses, train_aug, eval_aug, eval_batches, amp_dtype
    )


def _load_data(config: TrainConfig, announce: bool) -> Any:
    """The run's data bundle; ``announce`` prints a line before and after loading it."""
    loading = time.perf_counter()
    if announce:
        log(f"loading data: {config.data.name} ...")
    data = build_data(config)
    if announce:
        log(f"loaded {describe_data(data)} in {time.perf_counter() - loading:.1f} s")
    return data


def build_run(
    config: TrainConfig,
    *,
    evaluate_test: bool = True,
    checkpoint_state: dict[str, Any] | None = None,
    announce: bool = False,
    data: Any = None,
) -> tuple[EvalParts, TrainParts]:
    """Every part of a run of ``config`` (see the module docstring for the order, and
    :func:`build_eval_parts` for the arguments)."""
    parts = build_eval_parts(
        config,
        evaluate_test=evaluate_test,
        checkpoint_state=checkpoint_state,
        announce=announce,
        data=data,
    )
    device = parts.device
    # Model and losses in one (DDP-wrapped with several processes) module.
    model, step_module = wrap_for_training(
        parts.model, parts.losses, device, sync_bn=config.distributed.sync_bn
    )
    world_size = get_world_size()
    train_batches = Batches(
        parts.data.train,
        batch_size=config.batch_size,
        device=device,
        train=True,
        seed=config.seed,
        workers=config.workers,
        rank=get_rank(),
        world_size=world_size,
        sampler=config.data.sampler,
        samples_per_class=config.data.samples_per_class,
    )
    steps = len(train_batches)
    optimizer = build_optimizer(
        config.optim, model, list(parts.losses), [s.lr for s in parts.slots]
    )
    scheduler = build_scheduler(
        config.schedule, optimizer, steps_per_epoch=steps, epochs=config.epochs
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    generator = torch.Generator(device=device).manual_seed(config.seed)
    training = TrainParts(
        model,
        step_module,
        world_size,
        train_batches,
        steps,
        optimizer,
        scheduler,
        scaler,
        generator,
    )
    return parts, training


class ModelWithLosses(nn.Module):
    """The model and the losses as one module, so that DDP synchronises both.

    ``forward(x, labels, generator)`` returns the model's output and every loss's terms
    (:meth:`MultipleLosses.terms`). Computing the losses inside the wrapped forward lets DDP see
    which parameters (the losses' included) take part in the step.
    """

    def __init__(self, model: nn.Module, losses: MultipleLosses) -> None:
        super().__init__()
        self.model = model
        self.losses = losses

    def forward(
        self, x: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Any, list[dict[str, Tensor]]]:
        out = self.model(x)
        return out, self.losses.terms(out, labels, generator)


def wrap_for_training(
    model: nn.Module, losses: MultipleLosses, device: torch.device, *, sync_bn: bool = False
) -> tuple[nn.Module, nn.Module]:
    """``(model, step_module)``: the step module computes the output and the loss terms.

    In one process ``step_module`` is a plain :class:`ModelWithLosses`. With several ranks it
    is wrapped in DDP (after converting batch norms to ``SyncBatchNorm`` when ``sync_bn``;
    that conversion replaces modules, hence the returned ``model``). DDP looks for parameters
    without a gradient only when no loss consumes the logits (then the classifier is unused).
    """
    world = get_world_size()
    if world > 1 and sync_bn:
        if device.type == "cpu":
            raise ConfigError(
                "distributed.sync_bn needs CUDA devices (torch's SyncBatchNorm does not run on "
                "the CPU); set distributed.sync_bn to false for CPU processes"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    step = ModelWithLosses(model, losses)
    if world <= 1:
        return model, step
    from torch.nn.parallel import DistributedDataParallel

    uses_logits = any(getattr(loss, "consumes", "logits") == "logits" for loss in losses)
    ddp = DistributedDataParallel(
        step,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=not uses_logits,
    )
    return model, ddp


def describe_data(data: Any) -> str:
    """``3000 train / 1000 test images (3 x 32 x 32), 10 classes``."""
    sizes = [
        f"{len(ds)} {split}"
        for split, ds in (("train", data.train), ("val", data.val), ("test", data.test))
        if ds is not None
    ]
    shape = getattr(data.train, "images", None)
    shape_text = f" ({' x '.join(str(d) for d in shape.shape[1:])})" if shape is not None else ""
    return f"{' / '.join(sizes)} images{shape_text}, {data.num_classes} classes"
