"""Build once: everything a run needs, from its config, in one call (:func:`build_run`).

The order is fixed (it decides what the seeded generators produce): the device, the seeds, the
data, the model (rebuilt by :func:`~chanloss.run.builders.model_from_checkpoint` when the
run continues from a checkpoint), the losses and the objective, the DDP wrapping, the per-rank
seeds, the augmentation, the batch feeders, the optimiser and its schedule, the AMP scaler and
the losses' generator. The process group is opened before (``train`` holds it for the run);
the training loop (:class:`~chanloss.run.trainer.Trainer`) receives the :class:`RunParts`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chanloss.config import TrainConfig
from chanloss.core.errors import ConfigError
from chanloss.losses.objective import ModelWithLosses, Objective
from chanloss.run.batches import Batches
from chanloss.run.builders import (
    LossSlot,
    build_augmentations,
    build_data,
    build_losses,
    build_model,
    model_from_checkpoint,
    resolve_device,
)
from chanloss.run.distributed import (
    get_rank,
    get_world_size,
    local_device,
    log,
    objective_scale,
)
from chanloss.run.optim import build_optimizer, build_scheduler
from chanloss.run.preflight import check_image_size, preflight
from chanloss.run.seeding import seed_everything, seed_rank

__all__ = ["RunParts", "build_run", "describe_data", "wrap_for_training"]


@dataclass
class RunParts:
    """What the training loop needs, built from a config by :func:`build_run`."""

    device: torch.device
    data: Any  # the DataBundle: train / val / test splits, classes, channels, statistics
    model: nn.Module
    slots: list[LossSlot]
    losses: nn.ModuleList
    logit_slot: LossSlot | None  # the loss that scores the classes (a margin head), if any
    step_module: nn.Module  # model + losses in one module (DDP-wrapped with several ranks)
    objective: Objective
    world_size: int
    train_aug: nn.Module
    eval_aug: nn.Module
    train_batches: Batches
    eval_batches: dict[str, Batches]
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    amp_dtype: torch.dtype
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # the losses' generator (MC-Loss's channel masks)


def build_run(
    config: TrainConfig,
    *,
    evaluate_test: bool = True,
    checkpoint_state: dict[str, Any] | None = None,
    announce: bool = False,
) -> RunParts:
    """Build every part of a run of ``config`` (see the module docstring for the order).

    ``evaluate_test=False`` builds no test batches; ``checkpoint_state`` (the checkpoint the
    run continues from, or is evaluated from) rebuilds the model as that checkpoint's model;
    ``announce`` prints a line before and after loading the data.
    """
    device = local_device(resolve_device(config.device))
    seed_everything(config.seed)

    preflight(config)  # what the config alone decides fails before the data is loaded
    loading = time.perf_counter()
    if announce:
        log(f"loading data: {config.data.name} ...")
    data = build_data(config)
    if announce:
        log(f"loaded {describe_data(data)} in {time.perf_counter() - loading:.1f} s")
    shape = {"num_classes": data.num_classes, "in_channels": data.in_channels}
    check_image_size(config, image_size=tuple(data.image_size), **shape)
    if checkpoint_state is None:
        model = build_model(config, **shape).to(device)
    else:  # resumed or loaded: rebuilt as the checkpoint's model was
        model = model_from_checkpoint(config, checkpoint_state, **shape).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    slots = build_losses(config, model, data.num_classes)
    losses = nn.ModuleList(slot.loss for slot in slots).to(device)
    logit_slot = next((s for s in slots if s.loss.provides_logits), None)
    # Model and losses in one (DDP-wrapped with several processes) module.
    model, step_module = wrap_for_training(
        model,
        list(losses),
        [slot.takes_generator for slot in slots],
        device,
        sync_bn=config.distributed.sync_bn,
    )
    objective = Objective(
        list(losses),
        [slot.weight for slot in slots],
        [list(slot.columns) for slot in slots],
        [objective_scale(slot.loss) for slot in slots],
    )
    world_size = get_world_size()
    seed_rank(config.seed)
    train_aug, eval_aug = build_augmentations(config, data, device)

    eval_bs = config.eval_batch_size or 2 * config.batch_size
    train_batches = Batches(
        data.train,
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
    eval_batches = {
        split: Batches(
            ds,
            batch_size=eval_bs,
            device=device,
            train=False,
            workers=config.workers,
            rank=get_rank(),
            world_size=world_size,
        )
        for split, ds in (("val", data.val), ("test", data.test))
        if ds is not None and (split != "test" or evaluate_test)
    }
    steps_per_epoch = len(train_batches)
    optimizer = build_optimizer(config.optim, model, list(losses), [s.lr for s in slots])
    scheduler = build_scheduler(
        config.schedule, optimizer, steps_per_epoch=steps_per_epoch, epochs=config.epochs
    )
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    generator = torch.Generator(device=device).manual_seed(config.seed)
    return RunParts(
        device=device,
        data=data,
        model=model,
        slots=slots,
        losses=losses,
        logit_slot=logit_slot,
        step_module=step_module,
        objective=objective,
        world_size=world_size,
        train_aug=train_aug,
        eval_aug=eval_aug,
        train_batches=train_batches,
        eval_batches=eval_batches,
        steps_per_epoch=steps_per_epoch,
        optimizer=optimizer,
        scheduler=scheduler,
        amp_dtype=amp_dtype,
        scaler=scaler,
        generator=generator,
    )


def wrap_for_training(
    model: nn.Module,
    losses: Sequence[nn.Module],
    takes_generator: Sequence[bool],
    device: torch.device,
    *,
    sync_bn: bool = False,
) -> tuple[nn.Module, nn.Module]:
    """``(model, step_module)``: the step module computes the output and the loss terms.

    In one process ``step_module`` is a plain
    :class:`~chanloss.losses.objective.ModelWithLosses`. With several ranks it
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
    step = ModelWithLosses(model, losses, takes_generator)
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
