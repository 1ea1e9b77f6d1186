"""The training loop: :class:`Trainer` trains the parts :func:`~chanloss.run.build.build_run`
builds, an epoch at a time (:func:`~chanloss.run.epoch.train_one_epoch`), and keeps the run's
progress: what a checkpoint holds (:meth:`Trainer.state`, :meth:`Trainer.load_state`) and what
the run reports (:meth:`Trainer.summary`). :func:`~chanloss.run.session.train` runs a config
into a locked run directory.

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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from chanloss.config import TrainConfig, config_to_dict, dump_config, resolved_config_dict
from chanloss.core.errors import CheckpointError
from chanloss.run.batches import Batches
from chanloss.run.build import build_run
from chanloss.run.builders import count_parameters, run_preprocessing
from chanloss.run.checkpoint import capture_rng, check_resumable, describe, restore_rng
from chanloss.run.distributed import all_gather_object, barrier, get_rank, is_main_process, log
from chanloss.run.epoch import EpochWatch, StepCount, StepParts, train_one_epoch
from chanloss.run.evaluator import Evaluator
from chanloss.run.grad_share import GradShare
from chanloss.run.progress import epoch_line, log_epoch, open_tensorboard
from chanloss.run.result import RunResult
from chanloss.run.run_dir import RunDir
from chanloss.run.run_state import check_world_size, rank_rng_state, rounded
from chanloss.run.stopping import NonFiniteCheck, StopRequest, TrainingInterrupted
from chanloss.run.stopping import NonFiniteLossError as NonFiniteLossError  # importable here

__all__ = ["NonFiniteLossError", "Trainer", "TrainingInterrupted"]


class Trainer(Evaluator):
    """Trains ``config`` into ``out_dir``; see the module docstring for the files it writes.

    ``verbose``: 0 prints nothing, 1 shows a progress bar per epoch (on a terminal), 2 also
    prints one line per epoch. ``evaluate_test=False`` never reads the test split (its
    ``test_acc`` is empty; ``chanloss tune`` searches so). ``on_epoch_end(epoch, row)`` is
    called after each epoch's files are written, with the epoch's metrics row; an exception it
    raises (e.g. ``optuna.TrialPruned``) ends the run there, the checkpoints kept.
    ``checkpoint_state``: the checkpoint the trainer will be loaded from (resume, evaluation);
    its model is then built by :func:`~chanloss.run.builders.model_from_checkpoint`.

    The model, losses and evaluation batches are the :class:`~chanloss.run.evaluator.Evaluator`
    part; every part is built once by :func:`~chanloss.run.build.build_run`.
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
        data: Any = None,
    ) -> None:
        epoch_lines = verbose >= 2  # plain lines (also in a log file, unlike the bar)
        parts, training = build_run(
            config,
            evaluate_test=evaluate_test,
            checkpoint_state=checkpoint_state,
            announce=epoch_lines,
            data=data,
        )
        super().__init__(parts)  # config (with a chosen image size), device, data, model, ...
        config = self.config
        # -- where the run goes and what it prints
        self.run: RunDir = out_dir if isinstance(out_dir, RunDir) else RunDir(out_dir)
        self.out_dir: Path = self.run.path
        self.verbose: int = verbose
        self.epoch_lines: bool = epoch_lines
        self.on_epoch_end = on_epoch_end
        self.writer: Any = None  # TensorBoard, while fit() runs with tensorboard: true
        # a pruned checkpoint's channel record (chanloss.models.pruned), kept in its checkpoints
        self.structure: dict[str, Any] | None = (checkpoint_state or {}).get("pruning")
        # -- what training adds to the evaluator
        self.model: nn.Module = training.model  # with SyncBatchNorm if asked
        self.step_module: Callable[..., Any] = training.step_module
        self.world_size: int = training.world_size
        self.train_batches: Batches = training.train_batches
        self.steps_per_epoch: int = training.steps_per_epoch
        self.optimizer: torch.optim.Optimizer = training.optimizer
        self.scheduler: Any = training.scheduler
        self.scaler: torch.amp.GradScaler = training.scaler
        self.generator: torch.Generator = training.generator  # the losses' (MC-Loss's masks)
        self.params: list[Tensor] = [*self.model.parameters(), *self.losses.parameters()]
        # -- the run's progress
        self.epoch: int = 0  # epochs completed
        self.step_count = StepCount()  # optimisation steps taken (global_step)
        self.history: list[dict[str, Any]] = []
        self.best_val: float | None = None
        self.best_epoch: int | None = None
        self.columns: list[str] = [col for slot in self.slots for col in slot.columns.values()]
        gated = getattr(self.model, "gate", None) is not None
        self.grad_share = GradShare(self.slots, config.grad_share_every, gated=gated)
        self.stop = StopRequest()  # set by a stop signal; the loop stops after the step
        self._partial: dict[str, Any] | None = None  # a mid-epoch position (Ctrl-C, resume)
        self._partial_ranks: list[Any] | None = None  # every rank's position, for last.pt
        self._rank_rng: list[Any] | None = None  # every rank's generator states, for last.pt
        # -- numeric faults. On CPU a per-step check costs nothing; on accelerators "stop"
        # keeps a device flag.
        self._check_every_step: bool = self.device.type == "cpu" or config.on_nonfinite == "skip"
        self.nonfinite = NonFiniteCheck(
            self.device, self.columns, config.on_nonfinite, self.steps_per_epoch, self.run.last
        )
        # on_nonfinite: skip restores every buffer (BN statistics...) of a skipped step
        self._buffers: list[Tensor] = [*self.model.buffers(), *self.losses.buffers()]
        self._buffer_copy: list[Tensor] | None = (
            [b.detach().clone() for b in self._buffers]
            if config.on_nonfinite == "skip" and self._buffers
            else None
        )

    @property
    def global_step(self) -> int:
        """Optimisation steps taken (the schedule's and the losses' step count)."""
        return self.step_count.value

    @global_step.setter
    def global_step(self, value: int) -> None:
        self.step_count.value = value

    # -- one epoch -----------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training set (:func:`~chanloss.run.epoch.train_one_epoch`);
        returns the epoch's mean terms, loss and accuracy.

        After Ctrl-C (:attr:`stop`) the current step is finished, ``last.pt`` is written with
        the position in the epoch and :class:`TrainingInterrupted` is raised; a run resumed
        from it continues with the next step.
        """
        parts = StepParts(
            model=self.model,
            losses=self.losses,
            step_module=self.step_module,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            params=self.params,
            augment=self.train_aug,
            generator=self.generator,
            autocast=self._autocast,
            device=self.device,
        )
        watch = EpochWatch(
            columns=self.columns,
            nonfinite=self.nonfinite,
            check_every_step=self._check_every_step,
            raise_first_bad=self._raise_first_bad,
            stop=self.stop,
            world_size=self.world_size,
            grad_share=self.grad_share,
            last=self.run.last,
            writer=self.writer,
            buffers=self._buffers,
            buffer_copy=self._buffer_copy,
        )
        partial, self._partial = self._partial, None
        return train_one_epoch(
            epoch,
            parts,
            self.train_batches,
            watch,
            config=self.config,
            count=self.step_count,
            partial=partial,
            verbose=self.verbose,
            on_interrupt=self._interrupt,
        )

    def _raise_first_bad(self, epoch: int) -> None:
        """Raise for a non-finite step recorded on the device (one host sync)."""
        self.nonfinite.raise_first_bad(epoch)

    def _interrupt(self, partial: dict[str, Any]) -> None:
        """Save ``last.pt`` at the position ``partial`` and raise :class:`TrainingInterrupted`."""
        self._partial = partial
        if self.world_size > 1:  # every rank's position and generators
            self._partial_ranks = all_gather_object(self._partial)
            self._rank_rng = all_gather_object(capture_rng(self.device, self.generator))
        if is_main_process():
            self.run.save(self.state(), best=False)
        self._partial = self._partial_ranks = self._rank_rng = None
        barrier()  # last.pt is written before any rank ends
        raise TrainingInterrupted(
            f"interrupted{self.stop.by()} at epoch {partial['epoch'] + 1}, step "
            f"{partial['step']}/{self.steps_per_epoch}; saved {self.out_dir / 'last.pt'}",
            self.out_dir,
            self.stop.signum,
        )

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
                self._end_epoch(row, last)
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

    def _end_epoch(self, row: dict[str, Any], last: int) -> None:
        """Record an epoch's ``row``: best epoch, checkpoints, ``metrics.csv``, the epoch line,
        ``on_epoch_end``; a stop request agreed by every rank ends the run here."""
        self.epoch = row["epoch"]
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
            if self.writer is not None:
                log_epoch(self.writer, self.columns, row, self.global_step)
        self._rank_rng = None
        barrier()  # the epoch's files are written before any rank goes on
        if self.epoch_lines:
            log(epoch_line(self.config, self.columns, row))
        if self.on_epoch_end is not None:
            self.on_epoch_end(self.epoch, row)
        if self.stop.agreed(self.world_size, self.device) and self.epoch < last:
            raise TrainingInterrupted(
                f"interrupted{self.stop.by()} after epoch {self.epoch}; saved "
                f"{self.out_dir / 'last.pt'}",
                self.out_dir,
                self.stop.signum,
            )

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

    def resume_line(self, path: Path) -> str:
        """Where a resumed run continues: mid-epoch (after Ctrl-C or a signal) or after an
        epoch."""
        total = self.config.epochs
        if self._partial is not None:
            step = int(self._partial["step"])
            return (
                f"resuming {path} in epoch {self.epoch + 1} of {total} at step "
                f"{step + 1}/{self.steps_per_epoch} (global step {self.global_step + 1})"
            )
        return (
            f"resuming {path} after epoch {self.epoch} of {total}: epoch {self.epoch + 1} "
            f"starts at global step {self.global_step + 1}"
        )

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

    def load_state(self, state: dict[str, Any], source: str) -> None:
        """Continue from a checkpoint of the same model, losses and data (checked)."""
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

    def _save(self, *, best: bool) -> None:
        self.run.save(self.state(), best=best)

    def _write_metrics(self) -> None:
        fields = ["epoch", *self.columns, "train_loss", "train_acc", "val_acc", "test_acc", "lr"]
        fields += ["epoch_time", "samples_per_s"]
        if self.config.on_nonfinite == "skip":
            fields.append("skipped_steps")
        fields += self.grad_share.columns
        self.run.write_metrics([rounded(row) for row in self.history], fields)
