"""The training loop: :class:`Trainer` trains the parts :func:`~chanloss.run.build.build_run`
builds; :func:`~chanloss.run.session.train` runs a config into a locked run directory.

The run directory (:class:`~chanloss.run.run_dir.RunDir`) holds ``config.yaml``,
``metrics.csv`` (one row per epoch), ``summary.json``, ``last.pt`` and ``best.pt`` (chosen on the
validation split when there is one, else the last epoch); a run reports the test accuracy of
its final epoch. A NaN/inf loss stops the run at its step, or skips the step (``on_nonfinite``);
Ctrl-C, SIGTERM and SIGUSR1 finish the step, write ``last.pt`` and raise
:class:`TrainingInterrupted` (see :mod:`chanloss.run.stopping`); ``--resume`` continues
exactly. Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from chanloss.config import TrainConfig, dump_config
from chanloss.core.errors import LossInputError, TrainingDiverged
from chanloss.models.base import ModelOutput
from chanloss.run.build import build_run
from chanloss.run.checkpoint import capture_rng
from chanloss.run.distributed import (
    all_gather_object,
    barrier,
    broadcast_buffers,
    is_main_process,
    log,
    reduce_sum,
)
from chanloss.run.grad_share import GradShare
from chanloss.run.progress import (
    epoch_bar,
    epoch_line,
    log_epoch,
    log_step,
    open_tensorboard,
    show_means,
)
from chanloss.run.result import RunResult
from chanloss.run.run_dir import RunDir
from chanloss.run.run_state import (
    restore_trainer,
    rounded,
    run_summary,
    trainer_state,
)
from chanloss.run.stopping import (
    NonFiniteCheck,
    NonFiniteLossError,
    StopRequest,
    TrainingInterrupted,
    refused_input_error,
)

_POSTFIX_EVERY = 10  # steps between progress-bar updates and, on accelerators, NaN checks


class Trainer:
    """Trains ``config`` into ``out_dir``; see the module docstring for the files it writes.

    ``verbose``: 0 prints nothing, 1 shows a progress bar per epoch (on a terminal), 2 also
    prints one line per epoch. ``evaluate_test=False`` never reads the test split (its
    ``test_acc`` is empty; ``chanloss tune`` searches so). ``on_epoch_end(epoch, row)`` is
    called after each epoch's files are written, with the epoch's metrics row; an exception it
    raises (e.g. ``optuna.TrialPruned``) ends the run there, the checkpoints kept.
    ``checkpoint_state``: the checkpoint the trainer will be loaded from (resume, evaluation);
    its model is then built by :func:`~chanloss.run.builders.model_from_checkpoint`.
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path | RunDir,
        *,
        verbose: int = 2,
        evaluate_test: bool = True,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
        checkpoint_state: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        # a pruned checkpoint's channel record (chanloss.models.pruned), kept in its checkpoints
        self.structure = (checkpoint_state or {}).get("pruning")
        self.run = out_dir if isinstance(out_dir, RunDir) else RunDir(out_dir)
        self.out_dir = self.run.path
        self.verbose = verbose
        self.epoch_lines = verbose >= 2  # plain lines (also in a log file, unlike the bar)
        self.writer: Any = None  # TensorBoard, while fit() runs with tensorboard: true
        self.on_epoch_end = on_epoch_end
        parts = build_run(
            config,
            evaluate_test=evaluate_test,
            checkpoint_state=checkpoint_state,
            announce=self.epoch_lines,
        )
        for part in dataclasses.fields(parts):  # self.model, self.data, self.optimizer, ...
            setattr(self, part.name, getattr(parts, part.name))
        if self.data.chosen:  # image_size: auto -> the size chosen, in config.yaml and checkpoints
            options = {**config.data.options, **self.data.chosen}
            data = config.data.model_copy(update={"options": options})
            self.config = config = config.model_copy(update={"data": data})
        self.params = list(self.model.parameters()) + list(self.losses.parameters())

        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.best_val: float | None = None
        self.best_epoch: int | None = None
        self.columns = [col for slot in self.slots for col in slot.columns.values()]
        gated = getattr(self.model, "gate", None) is not None
        self.grad_share = GradShare(self.slots, config.grad_share_every, gated=gated)
        self._rank_rng: list[Any] | None = None  # every rank's generator states, for last.pt
        self.stop = StopRequest()  # set by a stop signal; the loop stops after the step
        self._partial_ranks: list[Any] | None = None  # every rank's position, for last.pt
        self._partial: dict[str, Any] | None = None  # a mid-epoch position (Ctrl-C, resume)
        # On CPU a per-step check costs nothing; on accelerators "stop" keeps a device flag.
        self._check_every_step = self.device.type == "cpu" or config.on_nonfinite == "skip"
        self.nonfinite = NonFiniteCheck(
            self.device, self.columns, config.on_nonfinite, self.steps_per_epoch, self.run.last
        )
        # on_nonfinite: skip restores every buffer (BN statistics...) of a skipped step
        self._buffers = [*self.model.buffers(), *self.losses.buffers()]
        self._buffer_copy = (
            [b.detach().clone() for b in self._buffers]
            if config.on_nonfinite == "skip" and self._buffers
            else None
        )

    # -- one step / one epoch --------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.config.amp)

    def _prepare(self, x: Tensor, augment: nn.Module) -> Tensor:
        with torch.no_grad():
            x = augment(x)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def class_scores(self, out: ModelOutput) -> Tensor:
        """Accuracy logits: a margin head's / L-GM's ``logits(embedding)``, else the model's."""
        if self.logit_slot is None:
            return out.logits
        return self.logit_slot.loss.logits(out.embedding)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training set; returns the epoch's mean terms, loss and accuracy.

        A non-finite loss raises :class:`NonFiniteLossError` or skips the step (see
        ``on_nonfinite``). After Ctrl-C (:attr:`stop`) the current step is finished,
        ``last.pt`` is written with the position in the epoch and :class:`TrainingInterrupted`
        is raised; a run resumed from it continues with the next step.
        """
        self.model.train()
        self.losses.train()
        n_terms = len(self.columns)
        sums = torch.zeros(n_terms + 1, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = skipped = first = 0
        elapsed = 0.0
        partial, self._partial = self._partial, None
        if partial is not None:  # resumed inside this epoch
            first, seen, skipped = int(partial["step"]), int(partial["seen"]), partial["skipped"]
            sums, correct = partial["sums"].to(self.device), partial["correct"].to(self.device)
            elapsed = float(partial["elapsed"])
            self.grad_share.points = [list(p) for p in partial.get("grad_share", [])]
        self.nonfinite.reset()
        start = time.perf_counter() - elapsed
        bar = epoch_bar(self.config, epoch, self.steps_per_epoch, self.verbose)
        if bar is not None and first:
            bar.update(first)
        batches = self.train_batches.epoch(epoch, start=first)
        for step, (x, y) in enumerate(batches, start=first):
            for slot in self.slots:
                slot.loss.update_schedule(self.global_step)
            x = self._prepare(x, self.train_aug)
            if self._buffer_copy is not None:
                torch._foreach_copy_(self._buffer_copy, self._buffers)
            with self._autocast():
                out, slot_terms = self._forward(x, y, epoch, step)
                # What is back-propagated: gathered losses x world size (DDP averages ranks).
                objective, to_backward, values = self.objective(slot_terms)
            stacked = torch.stack([*values, objective.detach().float()])
            if self.nonfinite.step_is_finite(stacked, epoch, step, self._check_every_step):
                if self.grad_share.due(self.global_step):  # from this graph, before backward
                    scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
                    self.grad_share.record(
                        out, slot_terms, step=self.global_step, scale=scale, writer=self.writer
                    )
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(to_backward).backward()
                if self.config.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                for slot in self.slots:  # state moved outside the optimiser (centre loss)
                    slot.loss.update_state(getattr(out, slot.loss.consumes).detach(), y)
                with torch.no_grad():
                    sums += stacked * y.shape[0]
                    correct += (self.class_scores(out).argmax(1) == y).sum()
                seen += y.shape[0]
                self.scheduler.step()
            else:  # on_nonfinite: skip; the schedule advances as if the step had been taken
                self.optimizer.zero_grad(set_to_none=True)
                if self._buffer_copy is not None:  # the forward's buffer updates are undone
                    torch._foreach_copy_(self._buffers, self._buffer_copy)
                skipped += 1
                with warnings.catch_warnings():  # torch warns if no optimizer step came yet
                    warnings.simplefilter("ignore", UserWarning)
                    self.scheduler.step()
            self.global_step += 1

            log_point = (step + 1) % _POSTFIX_EVERY == 0 or step + 1 == self.steps_per_epoch
            if log_point and not self._check_every_step:
                self._raise_first_bad(epoch)
            if log_point and self.writer is not None:  # one host copy per 10 steps, if asked
                lr = self.optimizer.param_groups[0]["lr"]
                log_step(self.writer, self.columns, stacked, lr, self.global_step)
            if bar is not None:
                bar.update(1)
                if log_point and seen:
                    show_means(bar, self.columns, sums, seen, time.perf_counter() - start)
            stop = (
                self.stop.requested
                if self.world_size == 1
                else log_point and self.stop.agreed(self.world_size, self.device)
            )
            if stop and step + 1 < self.steps_per_epoch:
                if bar is not None:
                    bar.close()
                self._interrupt(epoch, step + 1, sums, correct, seen, skipped, start)
        if bar is not None:
            bar.close()
        broadcast_buffers(self.model, self.losses)  # rank 0's BN statistics on every rank
        totals = reduce_sum(torch.cat([sums, correct.float().view(1)]))
        seen_total = int(reduce_sum(torch.tensor(float(seen), device=self.device)).item())
        if seen_total == 0:
            raise NonFiniteLossError(
                f"every step of epoch {epoch + 1} had a non-finite loss and was skipped "
                "(on_nonfinite: skip); lower optim.lr, add warm-up or set grad_clip"
            )
        means = (totals / max(seen_total, 1)).tolist()
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({c: v for c, v in zip(self.columns, means[:n_terms], strict=True)})
        row["train_loss"] = means[n_terms]
        row["train_acc"] = means[n_terms + 1]
        row["samples_per_s"] = seen_total / max(time.perf_counter() - start, 1e-9)
        if self.config.on_nonfinite == "skip":
            row["skipped_steps"] = skipped
        row.update(self.grad_share.epoch_means())
        if not math.isfinite(row["train_loss"]):
            raise TrainingDiverged(
                f"training diverged in epoch {epoch + 1} (loss {row['train_loss']}); "
                "lower optim.lr, add warm-up or set grad_clip"
            )
        return row

    # -- numeric faults and interruption ---------------------------------------------------
    def _forward(self, x: Tensor, y: Tensor, epoch: int, step: int) -> Any:
        """The step module's output and loss terms; a loss refusing its input (``check_finite``)
        is a :class:`NonFiniteLossError` naming the loss, epoch and step."""
        try:
            return self.step_module(x, y, self.generator)
        except LossInputError as err:
            name = self.slots[err.index].name
            where = (epoch, step, self.steps_per_epoch, self.global_step)
            raise refused_input_error(name, err, *where, self.run.last) from None

    def _raise_first_bad(self, epoch: int) -> None:
        """Raise for a non-finite step recorded on the device (one host sync)."""
        self.nonfinite.raise_first_bad(epoch)

    def _interrupt(
        self,
        epoch: int,
        step: int,
        sums: Tensor,
        correct: Tensor,
        seen: int,
        skipped: int,
        start: float,
    ) -> None:
        """Save ``last.pt`` at ``step`` of ``epoch`` and raise :class:`TrainingInterrupted`."""
        if not self._check_every_step:
            self._raise_first_bad(epoch)
        self._partial = {
            "epoch": epoch,
            "step": step,
            "sums": sums.detach().cpu(),
            "correct": correct.detach().cpu(),
            "seen": seen,
            "skipped": skipped,
            "elapsed": time.perf_counter() - start,
            "grad_share": [list(p) for p in self.grad_share.points],  # this epoch's so far
        }
        if self.world_size > 1:  # every rank's position and generators
            self._partial_ranks = all_gather_object(self._partial)
            self._rank_rng = all_gather_object(capture_rng(self.device, self.generator))
        if is_main_process():
            self.run.save(self.state(), best=False)
        self._partial = self._partial_ranks = self._rank_rng = None
        barrier()  # last.pt is written before any rank ends
        raise TrainingInterrupted(
            f"interrupted{self.stop.by()} at epoch {epoch + 1}, step {step}/{self.steps_per_epoch}; "
            f"saved {self.out_dir / 'last.pt'}",
            self.out_dir,
            self.stop.signum,
        )

    @torch.no_grad()
    def predict(self, split: str) -> Iterator[tuple[Tensor, Tensor]]:
        """``(scores, labels)`` batches of a split, in eval mode (no channel dropping)."""
        self.model.eval()
        self.losses.eval()
        for x, y in self.eval_batches[split].epoch():
            with self._autocast():
                scores = self.class_scores(self.model(self._prepare(x, self.eval_aug)))
            yield scores.float(), y

    def accuracy(self, split: str) -> float:
        """Top-1 accuracy on a split."""
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        total = 0
        for scores, y in self.predict(split):
            correct += (scores.argmax(1) == y).sum()
            total += y.shape[0]
        both = reduce_sum(
            torch.stack([correct.float(), torch.tensor(float(total), device=self.device)])
        )
        return float(both[0] / both[1].clamp_min(1))

    # -- the run -----------------------------------------------------------------------------
    def fit(self, *, stop_after: int | None = None) -> RunResult:
        """Train up to ``config.epochs`` (or until ``stop_after`` epochs are done); the result
        (the contents of ``summary.json``)."""
        cfg = self.config
        if is_main_process():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.run.write_text("config.yaml", dump_config(cfg))  # --resume reads it
        writer = self.writer = open_tensorboard(cfg, self.out_dir)
        last = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
        ctrl_c = contextlib.ExitStack()
        ctrl_c.enter_context(self.stop.handle())
        try:
            for epoch in range(self.epoch, last):
                start = time.perf_counter()
                row = self.train_epoch(epoch)
                evaluate = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
                row["val_acc"] = (
                    self.accuracy("val") if evaluate and "val" in self.eval_batches else None
                )
                test_now = epoch + 1 == cfg.epochs or (evaluate and cfg.test_every_epoch)
                row["test_acc"] = (
                    self.accuracy("test") if test_now and "test" in self.eval_batches else None
                )
                row["lr"] = self.optimizer.param_groups[0]["lr"]
                row["epoch_time"] = time.perf_counter() - start
                self.epoch = epoch + 1
                self.history.append(row)
                improved = row["val_acc"] is not None and (
                    self.best_val is None or row["val_acc"] > self.best_val
                )
                if improved:
                    self.best_val, self.best_epoch = row["val_acc"], self.epoch
                if self.world_size > 1:
                    self._rank_rng = all_gather_object(capture_rng(self.device, self.generator))
                if is_main_process():
                    self._save(best=improved or "val" not in self.eval_batches)
                    self._write_metrics()
                    if writer is not None:
                        log_epoch(writer, self.columns, row, self.global_step)
                self._rank_rng = None
                barrier()  # the epoch's files are written before any rank goes on
                if self.epoch_lines:
                    log(epoch_line(cfg, self.columns, row))
                if self.on_epoch_end is not None:
                    self.on_epoch_end(self.epoch, row)
                if self.stop.agreed(self.world_size, self.device) and self.epoch < last:
                    raise TrainingInterrupted(
                        f"interrupted{self.stop.by()} after epoch {self.epoch}; saved "
                        f"{self.out_dir / 'last.pt'}",
                        self.out_dir,
                        self.stop.signum,
                    )
        finally:
            ctrl_c.close()
            if writer is not None:
                writer.close()
            self.writer = None
        summary = self.summary()
        if self.epoch_lines and summary["final_test_acc"] is not None:
            log(
                f"test accuracy after epoch {self.epoch}: {100 * summary['final_test_acc']:.2f}% "
                "(evaluated once, at the end)"
            )
        if is_main_process():
            self.run.write_json("summary.json", summary)
        return RunResult(summary, self.out_dir)

    def summary(self) -> dict[str, Any]:
        """What a run reports (:func:`~chanloss.run.run_state.run_summary`)."""
        return run_summary(self)

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything ``--resume`` needs (:func:`~chanloss.run.run_state.trainer_state`)."""
        return trainer_state(self)

    def _save(self, *, best: bool) -> None:
        self.run.save(self.state(), best=best)

    def _write_metrics(self) -> None:
        fields = ["epoch", *self.columns, "train_loss", "train_acc", "val_acc", "test_acc", "lr"]
        fields += ["epoch_time", "samples_per_s"]
        if self.config.on_nonfinite == "skip":
            fields.append("skipped_steps")
        fields += self.grad_share.columns
        self.run.write_metrics([rounded(row) for row in self.history], fields)

    def load_state(self, state: dict[str, Any], source: str) -> None:
        """Continue from a checkpoint of the same model, losses and data."""
        restore_trainer(self, state, source)
