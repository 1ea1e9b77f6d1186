"""The training loop: configured losses, per-step schedule, AMP and checkpoints.

The run directory (:class:`~chanloss.training.run_dir.RunDir`: its lock, files and their
permissions) holds ``config.yaml`` (the resolved config), ``metrics.csv`` (one row per epoch),
``summary.json``, ``last.pt`` and ``best.pt`` (chosen on the validation split when
``data.val_fraction > 0``, else the last epoch). The accuracy a run reports is the test
accuracy of its final epoch.

Faults: a NaN/inf loss stops the run at the step it happens (or skips the step, see the config
key ``on_nonfinite``: a skipped step leaves the weights and every buffer, batch-norm
statistics included, as they were), keeping the last good checkpoint; a checkpoint that would
hold NaN/inf tensors is never written. Ctrl-C, SIGTERM and SIGUSR1 (what SLURM and
Kubernetes send before killing a job) finish the current step, write ``last.pt`` (mid-epoch;
``--resume`` continues from that step exactly) and raise :class:`TrainingInterrupted` (the
signals and the error wording live in :mod:`chanloss.training.stopping`). Every file is
written atomically, so a run killed at any point leaves readable checkpoints; ``--resume``
continues from the last one.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from chanloss.errors import TrainingDiverged
from chanloss.models.base import ModelOutput
from chanloss.training.builders import (
    Batches,
    build_augmentations,
    build_data,
    build_losses,
    build_model,
    count_parameters,
    model_from_checkpoint,
    resolve_device,
    run_preprocessing,
    seed_everything,
)
from chanloss.training.checkpoint import (
    CheckpointError,
    capture_rng,
    check_resumable,
    describe,
    load_checkpoint,
    restore_rng,
)
from chanloss.training.config import (
    ConfigError,
    TrainConfig,
    config_to_dict,
    dump_config,
    resolved_config_dict,
)
from chanloss.training.distributed import (
    LossInputError,
    all_gather_object,
    barrier,
    broadcast_buffers,
    broadcast_object,
    check_world_size,
    get_rank,
    get_world_size,
    is_main_process,
    local_device,
    log,
    objective_scale,
    process_group,
    rank_rng_state,
    reduce_sum,
    seed_rank,
    wrap_for_training,
)
from chanloss.training.optim import build_optimizer, build_scheduler
from chanloss.training.preflight import preflight
from chanloss.training.result import RunResult
from chanloss.training.run_dir import RunDir
from chanloss.training.stopping import (
    NonFiniteLossError,
    StopRequest,
    TrainingInterrupted,
    nonfinite_error,
)

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency
    tqdm = None

_POSTFIX_EVERY = 10  # steps between progress-bar updates and, on accelerators, NaN checks


class Trainer:
    """Trains ``config`` into ``out_dir``; see the module docstring for the files it writes.

    ``verbose``: 0 prints nothing, 1 shows a progress bar per epoch (on a terminal), 2 also
    prints one line per epoch. ``evaluate_test=False`` never reads the test split (its
    ``test_acc`` is empty; ``chanloss tune`` searches so). ``on_epoch_end(epoch, row)`` is
    called after each epoch's files are written, with the epoch's metrics row; an exception it
    raises (e.g. ``optuna.TrialPruned``) ends the run there, the checkpoints kept.
    ``checkpoint_state``: the checkpoint the trainer will be loaded from (resume, evaluation);
    its model is then built by :func:`~chanloss.training.builders.model_from_checkpoint`.
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
        self.device = local_device(resolve_device(config.device))
        seed_everything(config.seed)

        preflight(config)  # what the config alone decides fails before the data is loaded
        loading = time.perf_counter()
        if self.epoch_lines:
            log(f"loading data: {config.data.name} ...")
        self.data = build_data(config)
        if self.epoch_lines:
            log(f"loaded {_describe_data(self.data)} in {time.perf_counter() - loading:.1f} s")
        shape = {"num_classes": self.data.num_classes, "in_channels": self.data.in_channels}
        if checkpoint_state is None:
            self.model = build_model(config, **shape).to(self.device)
        else:  # resumed or loaded: rebuilt as the checkpoint's model was
            self.model = model_from_checkpoint(config, checkpoint_state, **shape).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.slots = build_losses(config, self.model, self.data.num_classes)
        self.losses = nn.ModuleList(slot.loss for slot in self.slots).to(self.device)
        self.logit_slot = next((s for s in self.slots if s.loss.provides_logits), None)
        # Model and losses in one (DDP-wrapped with several processes) module; see distributed.
        self.model, self.step_module = wrap_for_training(
            self.model,
            list(self.losses),
            [slot.takes_generator for slot in self.slots],
            self.device,
            sync_bn=config.distributed.sync_bn,
        )
        self.world_size = get_world_size()
        seed_rank(config.seed)
        self.train_aug, self.eval_aug = build_augmentations(config, self.data, self.device)

        eval_bs = config.eval_batch_size or 2 * config.batch_size
        self.train_batches = Batches(
            self.data.train,
            batch_size=config.batch_size,
            device=self.device,
            train=True,
            seed=config.seed,
            workers=config.workers,
            rank=get_rank(),
            world_size=self.world_size,
            sampler=config.data.sampler,
            samples_per_class=config.data.samples_per_class,
        )
        self.eval_batches = {
            split: Batches(
                ds,
                batch_size=eval_bs,
                device=self.device,
                train=False,
                workers=config.workers,
                rank=get_rank(),
                world_size=self.world_size,
            )
            for split, ds in (("val", self.data.val), ("test", self.data.test))
            if ds is not None and (split != "test" or evaluate_test)
        }
        self.steps_per_epoch = len(self.train_batches)
        self.optimizer = build_optimizer(
            config.optim, self.model, list(self.losses), [s.lr for s in self.slots]
        )
        self.scheduler = build_scheduler(
            config.schedule,
            self.optimizer,
            steps_per_epoch=self.steps_per_epoch,
            epochs=config.epochs,
        )
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=config.amp and self.device.type == "cuda"
        )
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.params = list(self.model.parameters()) + list(self.losses.parameters())

        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.best_val: float | None = None
        self.best_epoch: int | None = None
        self.columns = [col for slot in self.slots for col in slot.columns.values()]
        self._rank_rng: list[Any] | None = None  # every rank's generator states, for last.pt
        self.stop = StopRequest()  # set by a stop signal; the loop stops after the step
        self._partial_ranks: list[Any] | None = None  # every rank's position, for last.pt
        self._partial: dict[str, Any] | None = None  # a mid-epoch position (Ctrl-C, resume)
        # On CPU a per-step check costs nothing; on accelerators "stop" keeps a device flag.
        self._check_every_step = self.device.type == "cpu" or config.on_nonfinite == "skip"
        self._first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self._bad_values = torch.zeros(len(self.columns) + 1, device=self.device)
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
        self._first_bad.fill_(-1)
        start = time.perf_counter() - elapsed
        bar = self._bar(epoch)
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
                values: list[Tensor] = []
                objective: Tensor | None = None
                # What is back-propagated: gathered losses x world size (DDP averages ranks).
                to_backward: Tensor | None = None
                for slot, terms in zip(self.slots, slot_terms, strict=True):
                    part = slot.weight * slot.loss.combine(terms)
                    objective = part if objective is None else objective + part
                    scale = objective_scale(slot.loss)
                    scaled = part if scale == 1 else part * scale
                    to_backward = scaled if to_backward is None else to_backward + scaled
                    values.extend(terms[t].detach().float() for t in slot.columns)
            assert objective is not None and to_backward is not None
            stacked = torch.stack([*values, objective.detach().float()])
            if self._step_is_finite(stacked, epoch, step):
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
                self._log_step(stacked)
            if bar is not None:
                bar.update(1)
                if log_point and seen:
                    means = (sums / seen).tolist()
                    post = {
                        c: f"{v:.3g}" for c, v in zip([*self.columns, "loss"], means, strict=True)
                    }
                    post["img/s"] = f"{seen / (time.perf_counter() - start):.0f}"
                    bar.set_postfix(post, refresh=False)
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
            slot = self.slots[err.index]
            last = self.out_dir / "last.pt"
            kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint"
            raise NonFiniteLossError(
                f"loss {slot.name!r} (losses.{err.index}) refused its input at epoch "
                f"{epoch + 1}, step {step + 1}/{self.steps_per_epoch} (global step "
                f"{self.global_step + 1}): {err}; the model diverged: lower optim.lr, add "
                f"warm-up or set grad_clip; {kept}"
            ) from None

    def _step_is_finite(self, stacked: Tensor, epoch: int, step: int) -> bool:
        """False when the step must be skipped; raises for ``on_nonfinite: stop``.

        ``stacked`` holds the step's terms and objective. On CPU (and with ``skip``) they are
        checked now; on accelerators with ``stop`` the first bad step is kept on the device
        and checked at the next log point (:meth:`_raise_first_bad`), without a host sync.
        With several processes the decision is taken on the sum over ranks, so that every
        rank skips or stops at the same step.
        """
        if self._check_every_step:
            both = reduce_sum(stacked)
            if bool(torch.isfinite(both).all()):
                return True
            if self.config.on_nonfinite == "skip":
                return False
            raise self._nonfinite_error(stacked.tolist(), epoch, step)
        first = ~torch.isfinite(stacked).all() & (self._first_bad < 0)
        self._first_bad.copy_(
            torch.where(first, self._first_bad.new_full((), step), self._first_bad)
        )
        self._bad_values.copy_(torch.where(first, stacked, self._bad_values))
        return True

    def _raise_first_bad(self, epoch: int) -> None:
        """Raise for a non-finite step recorded on the device (one host sync)."""
        if float(reduce_sum((self._first_bad >= 0).float())) > 0:
            raise self._nonfinite_error(
                self._bad_values.tolist(), epoch, max(int(self._first_bad), 0)
            )

    def _nonfinite_error(self, values: list[float], epoch: int, step: int) -> NonFiniteLossError:
        return nonfinite_error(
            self.columns, values, epoch, step, self.steps_per_epoch, self.out_dir / "last.pt"
        )

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

    def _bar(self, epoch: int) -> Any:
        if self.verbose < 1 or tqdm is None or not is_main_process():
            return None
        return tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            unit="batch",
            leave=False,
            disable=None,  # off when not a terminal
            dynamic_ncols=True,
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
        writer = self.writer = self._tensorboard()
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
                        self._log_epoch(row)
                self._rank_rng = None
                barrier()  # the epoch's files are written before any rank goes on
                if self.epoch_lines:
                    log(self._epoch_line(row))
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

    def _epoch_line(self, row: dict[str, Any]) -> str:
        parts = [f"epoch {row['epoch']}/{self.config.epochs}"]
        parts += [f"{c} {row[c]:.4f}" for c in self.columns]
        if len(self.columns) > 1:
            parts.append(f"loss {row['train_loss']:.4f}")
        parts.append(f"train {100 * row['train_acc']:.2f}%")
        if row.get("val_acc") is not None:
            parts.append(f"val {100 * row['val_acc']:.2f}%")
        if self.config.test_every_epoch and row.get("test_acc") is not None:
            parts.append(f"test {100 * row['test_acc']:.2f}%")
        parts.append(f"lr {row['lr']:.4g}")
        parts.append(f"{row['epoch_time']:.1f}s ({row['samples_per_s']:.0f} img/s)")
        return "  ".join(parts)

    def _tensorboard(self) -> Any:
        if not self.config.tensorboard or not is_main_process():
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log(
                "tensorboard is not installed; skipping TensorBoard logging (pip install tensorboard)"
            )
            return None
        return SummaryWriter(str(self.out_dir / "tensorboard"))

    def _log_step(self, stacked: Tensor) -> None:
        """TensorBoard, every 10 steps: this step's loss terms and total, and the lr."""
        values = stacked.tolist()
        for column, value in zip([*self.columns, "total"], values, strict=True):
            self.writer.add_scalar(f"loss/{column}", value, self.global_step)
        self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.global_step)

    def _log_epoch(self, row: dict[str, Any]) -> None:
        """TensorBoard, every epoch, at the epoch's last global step (one x axis for all)."""
        tags = {
            "train_loss": "train/epoch_loss",
            "train_acc": "train/accuracy",
            "samples_per_s": "train/samples_per_s",
            "epoch_time": "train/epoch_time_s",
            "skipped_steps": "train/skipped_steps",
            "val_acc": "val/accuracy",
            "test_acc": "test/accuracy",
        }
        tags.update({c: f"loss/epoch_{c}" for c in self.columns})
        for key, tag in tags.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], self.global_step)
        self.writer.add_scalar("train/epoch", row["epoch"], self.global_step)
        self.writer.flush()

    def summary(self) -> dict[str, Any]:
        """What a run reports: the final epoch's test accuracy, best val accuracy and epoch."""
        final = self.history[-1] if self.history else {}
        return {
            "finished": self.epoch >= self.config.epochs,
            "epochs": self.epoch,
            "final_test_acc": final.get("test_acc"),
            "final_val_acc": final.get("val_acc"),
            "val_curve": [r["val_acc"] for r in self.history if r.get("val_acc") is not None],
            "final_train_acc": final.get("train_acc"),
            "final_train_loss": final.get("train_loss"),
            "best_val_acc": self.best_val,
            "best_epoch": self.best_epoch if self.best_val is not None else self.epoch,
            "train_time_s": sum(r["epoch_time"] for r in self.history),
            "params": count_parameters(self.model),
            "loss_params": count_parameters(self.losses),
            "model": self.config.model.name,
            "losses": [s.name for s in self.slots],
            "dataset": self.config.data.name,
            "splits": self.data.splits,
            "num_classes": self.data.num_classes,
            "seed": self.config.seed,
            "device": str(self.device),
            "processes": self.world_size,
            "torch": torch.__version__,
        }

    # -- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything ``--resume`` needs, as tensors and primitives."""
        return {
            "config": config_to_dict(self.config),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "losses": [slot.loss.state_dict() for slot in self.slots],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(self.device, self.generator),
            "rng_ranks": self._rank_rng,
            "partial": self._partial,  # the position inside an epoch (after Ctrl-C), or None
            "partial_ranks": self._partial_ranks,  # every rank's, with several processes
            "best": {"val_acc": self.best_val, "epoch": self.best_epoch},
            "history": self.history,
            **({"pruning": self.structure} if self.structure is not None else {}),
            "meta": {
                "num_classes": int(self.data.num_classes),
                "in_channels": int(self.data.in_channels),
                "world_size": self.world_size,
                "class_names": [str(c) for c in (self.data.class_names or [])],
                "preprocessing": run_preprocessing(self.config, self.data),
            },
        }

    def _save(self, *, best: bool) -> None:
        self.run.save(self.state(), best=best)

    def _write_metrics(self) -> None:
        fields = ["epoch", *self.columns, "train_loss", "train_acc", "val_acc", "test_acc", "lr"]
        fields += ["epoch_time", "samples_per_s"]
        if self.config.on_nonfinite == "skip":
            fields.append("skipped_steps")
        self.run.write_metrics([_rounded(row) for row in self.history], fields)

    def load_state(self, state: dict[str, Any], source: str) -> None:
        """Continue from a checkpoint of the same model, losses and data."""
        saved = resolved_config_dict(state.get("config", {}))
        check_resumable(saved, config_to_dict(self.config), source)
        check_world_size(int(state.get("meta", {}).get("world_size", 1)), source)
        try:
            self.model.load_state_dict(state["model"])
            if len(state["losses"]) != len(self.slots):
                raise RuntimeError(f"{len(state['losses'])} losses saved, {len(self.slots)} built")
            for slot, sd in zip(self.slots, state["losses"], strict=True):
                slot.loss.load_state_dict(sd)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CheckpointError(f"{source} does not fit this run ({describe(err)})") from None
        self.epoch = int(state["epoch"])
        partial = state.get("partial")
        if partial is not None and int(partial["epoch"]) != self.epoch:
            raise CheckpointError(
                f"{source} stopped inside epoch {int(partial['epoch']) + 1}, but it records "
                f"{self.epoch} finished epochs"
            )
        per_rank = state.get("partial_ranks")
        if partial is not None and isinstance(per_rank, list) and len(per_rank) == self.world_size:
            partial = per_rank[get_rank()]
        self._partial = partial
        self.global_step = int(state["global_step"])
        self.history = list(state["history"])
        self.best_val = state["best"]["val_acc"]
        self.best_epoch = state["best"]["epoch"]
        restore_rng(rank_rng_state(state), self.device, self.generator)


def train(
    config: TrainConfig,
    out_dir: str | Path | RunDir,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    verbose: int = 2,
    evaluate_test: bool = True,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train ``config`` into ``out_dir`` and return its :class:`~chanloss.training.result.RunResult`
    (final test/validation accuracy, best epoch, checkpoint paths; also the mapping written to
    ``summary.json``). See :class:`Trainer`, also for ``evaluate_test`` and ``on_epoch_end``.

    ``resume=True`` continues from ``out_dir/last.pt`` (a larger ``epochs`` extends a finished
    run); without it, a directory that already holds a run is an error. ``stop_after`` ends
    after that many epochs in total without changing the schedule (an interruption).

    The run directory is locked for the whole run (:class:`~chanloss.training.run_dir.RunDir`;
    a second run into it is refused); a ``RunDir`` the caller already holds is used as it is.

    Under torchrun (``WORLD_SIZE`` > 1) the process group is initialised here unless it already
    is, and every process trains its share (see :mod:`chanloss.training.distributed`); every
    rank reads ``last.pt`` (into host memory, then onto its own device), only rank 0 writes
    (and holds the lock).
    """
    run = out_dir if isinstance(out_dir, RunDir) else RunDir(out_dir)
    last = run.last
    held = run.locked  # by the caller (compare, tune): released by the caller
    _check_start(run, resume)
    with (
        process_group(
            config.distributed.backend,
            resolve_device(config.device),
            config.distributed.timeout_minutes,
        ),
        _owned(run),
    ):
        try:
            _check_start(run, resume)  # again, now that the directory is ours
            state = load_checkpoint(last, map_location="cpu") if resume else None
            trainer = Trainer(
                config,
                run,
                verbose=verbose,
                evaluate_test=evaluate_test,
                on_epoch_end=on_epoch_end,
                checkpoint_state=state,
            )
            if is_main_process():
                run.check_free_space(
                    [*trainer.model.state_dict().values(), *trainer.losses.state_dict().values()]
                )
            if state is not None:
                trainer.load_state(state, str(last))
        except BaseException:
            if not held:
                run.abandon()  # the lock file and an empty new directory go: nothing else
            raise
        if state is not None and verbose >= 2:
            log(_resume_line(trainer, run.path))
        return trainer.fit(stop_after=stop_after)


def _resume_line(trainer: Trainer, path: Path) -> str:
    """Where a resumed run continues: mid-epoch (after Ctrl-C or a signal) or after an epoch."""
    total = trainer.config.epochs
    partial = trainer._partial
    if partial is not None:
        step = int(partial["step"])
        return (
            f"resuming {path} in epoch {trainer.epoch + 1} of {total} at step "
            f"{step + 1}/{trainer.steps_per_epoch} (global step {trainer.global_step + 1})"
        )
    return (
        f"resuming {path} after epoch {trainer.epoch} of {total}: epoch {trainer.epoch + 1} "
        f"starts at global step {trainer.global_step + 1}"
    )


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row with floats at 6 significant digits (float32 noise is not information)."""
    return {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in row.items()}


def _describe_data(data: Any) -> str:
    """``finegrained: 3000 train / 1000 test images (3 x 32 x 32), 10 classes``."""
    sizes = [
        f"{len(ds)} {split}"
        for split, ds in (("train", data.train), ("val", data.val), ("test", data.test))
        if ds is not None
    ]
    shape = getattr(data.train, "images", None)
    shape_text = f" ({' x '.join(str(d) for d in shape.shape[1:])})" if shape is not None else ""
    return f"{' / '.join(sizes)} images{shape_text}, {data.num_classes} classes"


def _check_start(run: RunDir, resume: bool) -> None:
    if not resume and run.last.exists():
        raise ConfigError(
            f"{run.path} already holds a run (last.pt); use --resume or another --out"
        )
    if resume and not run.last.exists():
        raise CheckpointError(f"cannot resume: {run.last} does not exist")


@contextlib.contextmanager
def _owned(run: RunDir) -> Iterator[RunDir]:
    """Hold ``run``'s lock for the block on the main process (unless it is held already);
    when it cannot be had, every rank raises the same one-line error."""
    held = run.locked
    error: ConfigError | None = None
    if is_main_process() and not held:
        try:
            run.acquire()
        except ConfigError as err:
            error = err
    message = broadcast_object(None if error is None else str(error))
    if error is not None:
        raise error
    if message is not None:
        raise ConfigError(message)
    try:
        yield run
    finally:
        if not held:
            run.release()
