"""The loop's plain functions, as in timm: :func:`train_one_epoch` (one pass over the training
set) and :func:`evaluate` (top-1 accuracy of a split, from :func:`predict`).

:class:`~chanloss.run.trainer.Trainer` calls them with the parts it was built with
(:class:`StepParts`) and what watches the steps (:class:`EpochWatch`: numeric faults, stop
requests, the gradient-share record, TensorBoard). A stop request ends the epoch after its
step with the position (:class:`EpochPosition`) handed to ``on_interrupt``, which saves it
and raises; a run resumed from it continues with the next step.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from chanloss.config import TrainConfig
from chanloss.core.errors import LossInputError, TrainingDiverged
from chanloss.losses.objective import MultipleLosses
from chanloss.run.batches import Batches
from chanloss.run.distributed import broadcast_buffers, reduce_sum
from chanloss.run.grad_share import GradShare
from chanloss.run.progress import epoch_bar, log_step, show_means
from chanloss.run.stopping import (
    NonFiniteCheck,
    NonFiniteLossError,
    StopRequest,
    refused_input_error,
)

__all__ = [
    "EpochPosition",
    "EpochWatch",
    "StepCount",
    "StepParts",
    "evaluate",
    "predict",
    "prepare",
    "train_one_epoch",
]

_POSTFIX_EVERY = 10  # steps between progress-bar updates and, on accelerators, NaN checks


@dataclass
class StepCount:
    """The optimisation steps taken in the run (the schedule's and the losses' step count)."""

    value: int = 0


@dataclass
class StepParts:
    """What a training step uses, built once (:func:`~chanloss.run.build.build_run`)."""

    model: nn.Module
    losses: MultipleLosses
    step_module: Callable[..., tuple[Any, list[dict[str, Tensor]]]]  # (x, y, generator)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    params: list[Tensor]  # the model's and the losses' parameters (grad_clip)
    augment: nn.Module
    generator: torch.Generator
    autocast: Callable[[], AbstractContextManager]
    device: torch.device


@dataclass
class EpochWatch:
    """What watches the steps of an epoch."""

    columns: list[str]  # the logged terms' metric columns
    nonfinite: NonFiniteCheck
    check_every_step: bool  # else a non-finite step is checked at the next log point
    raise_first_bad: Callable[[int], None]  # raises for a step recorded on the device
    stop: StopRequest
    world_size: int
    grad_share: GradShare
    last: Path  # the run's last.pt (named by the errors)
    writer: Any = None  # TensorBoard
    buffers: list[Tensor] = field(default_factory=list)  # restored after a skipped step
    buffer_copy: list[Tensor] | None = None


@dataclass
class EpochPosition:
    """How far an epoch got: its next step and running sums (``partial`` in ``last.pt``)."""

    step: int
    sums: Tensor  # per logged term, then the objective: summed over samples
    correct: Tensor
    seen: int = 0
    skipped: int = 0
    elapsed: float = 0.0

    @classmethod
    def begin(
        cls, terms: int, device: torch.device, partial: dict[str, Any] | None
    ) -> EpochPosition:
        """A new epoch's position, or the one ``partial`` saved (a run resumed inside it)."""
        if partial is None:
            sums = torch.zeros(terms + 1, device=device)
            return cls(0, sums, torch.zeros((), dtype=torch.long, device=device))
        return cls(
            int(partial["step"]),
            partial["sums"].to(device),
            partial["correct"].to(device),
            int(partial["seen"]),
            partial["skipped"],
            float(partial["elapsed"]),
        )

    def state(self, epoch: int, start: float, grad_share: GradShare) -> dict[str, Any]:
        """The position as ``last.pt`` keeps it (``start``: when the epoch began)."""
        return {
            "epoch": epoch,
            "step": self.step,
            "sums": self.sums.detach().cpu(),
            "correct": self.correct.detach().cpu(),
            "seen": self.seen,
            "skipped": self.skipped,
            "elapsed": time.perf_counter() - start,
            "grad_share": [list(p) for p in grad_share.points],  # this epoch's so far
        }


def prepare(x: Tensor, augment: nn.Module, channels_last: bool) -> Tensor:
    """A batch augmented (without gradient) and, with ``channels_last``, in that layout."""
    with torch.no_grad():
        x = augment(x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(
    epoch: int,
    parts: StepParts,
    batches: Batches,
    watch: EpochWatch,
    *,
    config: TrainConfig,
    count: StepCount,
    partial: dict[str, Any] | None = None,
    verbose: int = 0,
    on_interrupt: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """One pass over the training set; returns the epoch's mean terms, loss and accuracy.

    ``partial`` is the position a resumed run stopped at inside this epoch. A non-finite loss
    raises :class:`NonFiniteLossError` or skips the step (``on_nonfinite``). After a stop
    request the step is finished and ``on_interrupt`` is called with the position (it saves
    ``last.pt`` and raises).
    """
    parts.model.train()
    parts.losses.train()
    steps = len(batches)
    pos = EpochPosition.begin(len(watch.columns), parts.device, partial)
    if partial is not None:
        watch.grad_share.points = [list(p) for p in partial.get("grad_share", [])]
    watch.nonfinite.reset()
    start = time.perf_counter() - pos.elapsed
    bar = epoch_bar(config, epoch, steps, verbose)
    if bar is not None and pos.step:
        bar.update(pos.step)
    for step, (x, y) in enumerate(batches.epoch(epoch, start=pos.step), start=pos.step):
        stacked = _train_step(parts, watch, config, x, y, epoch, step, count, pos)
        count.value += 1
        log_point = (step + 1) % _POSTFIX_EVERY == 0 or step + 1 == steps
        if log_point and not watch.check_every_step:
            watch.raise_first_bad(epoch)
        if log_point and watch.writer is not None:  # one host copy per 10 steps, if asked
            lr = parts.optimizer.param_groups[0]["lr"]
            log_step(watch.writer, watch.columns, stacked, lr, count.value)
        if bar is not None:
            bar.update(1)
            if log_point and pos.seen:
                show_means(bar, watch.columns, pos.sums, pos.seen, time.perf_counter() - start)
        stop = (
            watch.stop.requested
            if watch.world_size == 1
            else log_point and watch.stop.agreed(watch.world_size, parts.device)
        )
        if stop and step + 1 < steps:
            if bar is not None:
                bar.close()
            if not watch.check_every_step:
                watch.raise_first_bad(epoch)
            pos.step = step + 1
            on_interrupt(pos.state(epoch, start, watch.grad_share))
    if bar is not None:
        bar.close()
    return _epoch_row(epoch, parts, watch, config, pos, start)


def _train_step(
    parts: StepParts,
    watch: EpochWatch,
    config: TrainConfig,
    x: Tensor,
    y: Tensor,
    epoch: int,
    step: int,
    count: StepCount,
    pos: EpochPosition,
) -> Tensor:
    """One optimisation step (or a skipped one); the step's logged terms and objective."""
    parts.losses.update_schedule(count.value)
    x = prepare(x, parts.augment, config.channels_last)
    if watch.buffer_copy is not None:
        torch._foreach_copy_(watch.buffer_copy, watch.buffers)
    with parts.autocast():
        try:
            out, slot_terms = parts.step_module(x, y, parts.generator)
        except LossInputError as err:  # a loss refusing its input (check_finite)
            name = parts.losses.names[err.index]
            where = (epoch, step, watch.nonfinite.steps_per_epoch, count.value)
            raise refused_input_error(name, err, *where, watch.last) from None
        # What is back-propagated: gathered losses x world size (DDP averages ranks).
        objective, to_backward, values = parts.losses.combine(slot_terms)
    stacked = torch.stack([*values, objective.detach().float()])
    if watch.nonfinite.step_is_finite(stacked, epoch, step, watch.check_every_step):
        if watch.grad_share.due(count.value):  # from this graph, before backward
            scale = parts.scaler.get_scale() if parts.scaler.is_enabled() else 1.0
            watch.grad_share.record(
                out, slot_terms, step=count.value, scale=scale, writer=watch.writer
            )
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(to_backward).backward()
        if config.grad_clip is not None:
            parts.scaler.unscale_(parts.optimizer)
            nn.utils.clip_grad_norm_(parts.params, config.grad_clip)
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.losses.update_state(out, y)  # state moved outside the optimiser (centre loss)
        with torch.no_grad():
            pos.sums += stacked * y.shape[0]
            pos.correct += (parts.losses.class_scores(out).argmax(1) == y).sum()
        pos.seen += y.shape[0]
        parts.scheduler.step()
    else:  # on_nonfinite: skip; the schedule advances as if the step had been taken
        parts.optimizer.zero_grad(set_to_none=True)
        if watch.buffer_copy is not None:  # the forward's buffer updates are undone
            torch._foreach_copy_(watch.buffers, watch.buffer_copy)
        pos.skipped += 1
        with warnings.catch_warnings():  # torch warns if no optimizer step came yet
            warnings.simplefilter("ignore", UserWarning)
            parts.scheduler.step()
    return stacked


def _epoch_row(
    epoch: int,
    parts: StepParts,
    watch: EpochWatch,
    config: TrainConfig,
    pos: EpochPosition,
    start: float,
) -> dict[str, Any]:
    """The epoch's metrics row: its terms, loss and accuracy summed over every rank."""
    broadcast_buffers(parts.model, parts.losses)  # rank 0's BN statistics on every rank
    totals = reduce_sum(torch.cat([pos.sums, pos.correct.float().view(1)]))
    seen_total = int(reduce_sum(torch.tensor(float(pos.seen), device=parts.device)).item())
    if seen_total == 0:
        raise NonFiniteLossError(
            f"every step of epoch {epoch + 1} had a non-finite loss and was skipped "
            "(on_nonfinite: skip); lower optim.lr, add warm-up or set grad_clip"
        )
    n_terms = len(watch.columns)
    means = (totals / max(seen_total, 1)).tolist()
    row: dict[str, Any] = {"epoch": epoch + 1}
    row.update({c: v for c, v in zip(watch.columns, means[:n_terms], strict=True)})
    row["train_loss"] = means[n_terms]
    row["train_acc"] = means[n_terms + 1]
    row["samples_per_s"] = seen_total / max(time.perf_counter() - start, 1e-9)
    if config.on_nonfinite == "skip":
        row["skipped_steps"] = pos.skipped
    row.update(watch.grad_share.epoch_means())
    if not math.isfinite(row["train_loss"]):
        raise TrainingDiverged(
            f"training diverged in epoch {epoch + 1} (loss {row['train_loss']}); "
            "lower optim.lr, add warm-up or set grad_clip"
        )
    return row


@torch.no_grad()
def predict(
    model: nn.Module,
    losses: MultipleLosses,
    batches: Batches,
    augment: nn.Module,
    *,
    autocast: Callable[[], AbstractContextManager],
    channels_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(scores, labels)`` batches, in eval mode (no channel dropping); the scores are the
    :meth:`~chanloss.losses.objective.MultipleLosses.class_scores`, in float32."""
    model.eval()
    losses.eval()
    for x, y in batches.epoch():
        with autocast():
            scores = losses.class_scores(model(prepare(x, augment, channels_last)))
        yield scores.float(), y


def evaluate(predictions: Iterator[tuple[Tensor, Tensor]], device: torch.device) -> float:
    """Top-1 accuracy of :func:`predict`'s batches, over every rank."""
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    for scores, y in predictions:
        correct += (scores.argmax(1) == y).sum()
        total += y.shape[0]
    both = reduce_sum(torch.stack([correct.float(), torch.tensor(float(total), device=device)]))
    return float(both[0] / both[1].clamp_min(1))
