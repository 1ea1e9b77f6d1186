"""Optimiser and per-step learning-rate schedule (linear warm-up, then step/cosine/constant)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from chanloss.config import OptimConfig, ScheduleConfig


def build_optimizer(
    config: OptimConfig,
    model: nn.Module,
    losses: Sequence[nn.Module],
    loss_lrs: Sequence[float | None],
) -> torch.optim.Optimizer:
    """SGD or AdamW over the model's parameters and each loss's parameters.

    The model's parameters loaded from pretrained weights (``model.pretrained_parameters``,
    see :mod:`chanloss.models.pretrained`) form a group with learning rate ``lr *
    pretrained_lr_mult``; the others (the new classifier and head) use ``lr``. Each loss with
    parameters gets its own parameter group, with its own ``lr`` when the loss entry sets one.
    All groups follow the same schedule (the scheduler scales every group's initial learning
    rate by the same factor).
    """
    groups = model_groups(model, config.lr, config.pretrained_lr_mult)
    for loss, lr in zip(losses, loss_lrs, strict=True):
        params = [p for p in loss.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": config.lr if lr is None else lr})
    if config.name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
        )
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay
    )


def model_groups(model: nn.Module, lr: float, pretrained_lr_mult: float) -> list[dict]:
    """The model's parameter groups: the new layers at ``lr`` (first, so that the first group's
    rate is the one logged), then the pretrained ones at ``lr * pretrained_lr_mult``."""
    pretrained = getattr(model, "pretrained_parameters", None) or set()
    new, loaded = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (loaded if name in pretrained else new).append(param)
    groups = [{"params": new, "lr": lr}] if new else []
    if loaded:
        groups.append({"params": loaded, "lr": lr * pretrained_lr_mult})
    return groups


def lr_factor(
    config: ScheduleConfig, *, steps_per_epoch: int, epochs: int, floor: float = 0.0
) -> Callable[[int], float]:
    """The multiplier of the peak learning rate at optimisation step ``step`` (0-based).

    Warm-up rises linearly to 1 over ``warmup_epochs``; a step schedule multiplies by
    ``gamma`` at epoch boundaries; cosine decays from 1 to ``floor`` (``min_lr / lr``) at the
    end of the last epoch.
    """
    warmup = round(config.warmup_epochs * steps_per_epoch)
    total = max(1, epochs * steps_per_epoch)
    if config.milestones is not None:
        boundaries = [m * steps_per_epoch for m in config.milestones]
    elif config.step_size is not None:
        boundaries = None
        every = config.step_size * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.name == "constant":
            return 1.0
        if config.name == "step":
            count = sum(step >= b for b in boundaries) if boundaries is not None else step // every
            return config.gamma**count
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(
    config: ScheduleConfig,
    optimizer: torch.optim.Optimizer,
    *,
    steps_per_epoch: int,
    epochs: int,
) -> LambdaLR:
    """A :class:`LambdaLR` stepped after every optimisation step (one factor per group)."""
    factors = [
        lr_factor(
            config,
            steps_per_epoch=steps_per_epoch,
            epochs=epochs,
            floor=min(1.0, config.min_lr / group["lr"]),
        )
        for group in optimizer.param_groups
    ]
    return LambdaLR(optimizer, factors)
