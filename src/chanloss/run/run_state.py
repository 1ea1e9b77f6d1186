"""A run's state in a checkpoint and its summary: what ``last.pt``/``best.pt`` hold, how a
trainer continues from one, and what ``summary.json`` reports.

:func:`trainer_state` is everything ``--resume`` needs, as tensors and primitives;
:func:`restore_trainer` continues a trainer from such a state (the same model, losses and data,
checked); :func:`run_summary` is the run's summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from chanloss.config import config_to_dict, resolved_config_dict
from chanloss.core.errors import CheckpointError
from chanloss.run.builders import count_parameters, run_preprocessing
from chanloss.run.checkpoint import capture_rng, check_resumable, describe, restore_rng
from chanloss.run.distributed import get_rank, get_world_size

if TYPE_CHECKING:
    from chanloss.run.trainer import Trainer

__all__ = [
    "check_world_size",
    "rank_rng_state",
    "restore_trainer",
    "resume_line",
    "rounded",
    "run_summary",
    "trainer_state",
]


def trainer_state(t: Trainer) -> dict[str, Any]:
    """Everything ``--resume`` needs, as tensors and primitives."""
    return {
        "config": config_to_dict(t.config),
        "epoch": t.epoch,
        "global_step": t.global_step,
        "model": t.model.state_dict(),
        "losses": [slot.loss.state_dict() for slot in t.slots],
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "scaler": t.scaler.state_dict(),
        "rng": capture_rng(t.device, t.generator),
        "rng_ranks": t._rank_rng,
        "partial": t._partial,  # the position inside an epoch (after Ctrl-C), or None
        "partial_ranks": t._partial_ranks,  # every rank's, with several processes
        "best": {"val_acc": t.best_val, "epoch": t.best_epoch},
        "history": t.history,
        **({"pruning": t.structure} if t.structure is not None else {}),
        "meta": {
            "num_classes": int(t.data.num_classes),
            "in_channels": int(t.data.in_channels),
            "world_size": t.world_size,
            "class_names": [str(c) for c in (t.data.class_names or [])],
            "preprocessing": run_preprocessing(t.config, t.data),
        },
    }


def restore_trainer(t: Trainer, state: dict[str, Any], source: str) -> None:
    """Continue ``t`` from a checkpoint of the same model, losses and data."""
    saved = resolved_config_dict(state.get("config", {}))
    check_resumable(saved, config_to_dict(t.config), source)
    check_world_size(int(state.get("meta", {}).get("world_size", 1)), source)
    try:
        t.model.load_state_dict(state["model"])
        if len(state["losses"]) != len(t.slots):
            raise RuntimeError(f"{len(state['losses'])} losses saved, {len(t.slots)} built")
        for slot, sd in zip(t.slots, state["losses"], strict=True):
            slot.loss.load_state_dict(sd)
        t.optimizer.load_state_dict(state["optimizer"])
        t.scheduler.load_state_dict(state["scheduler"])
        t.scaler.load_state_dict(state["scaler"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"{source} does not fit this run ({describe(err)})") from None
    t.epoch = int(state["epoch"])
    partial = state.get("partial")
    if partial is not None and int(partial["epoch"]) != t.epoch:
        raise CheckpointError(
            f"{source} stopped inside epoch {int(partial['epoch']) + 1}, but it records "
            f"{t.epoch} finished epochs"
        )
    per_rank = state.get("partial_ranks")
    if partial is not None and isinstance(per_rank, list) and len(per_rank) == t.world_size:
        partial = per_rank[get_rank()]
    t._partial = partial
    t.global_step = int(state["global_step"])
    t.history = list(state["history"])
    t.best_val = state["best"]["val_acc"]
    t.best_epoch = state["best"]["epoch"]
    restore_rng(rank_rng_state(state), t.device, t.generator)


def run_summary(t: Trainer) -> dict[str, Any]:
    """What a run reports: the final epoch's test accuracy, best val accuracy and epoch."""
    final = t.history[-1] if t.history else {}
    return {
        "finished": t.epoch >= t.config.epochs,
        "epochs": t.epoch,
        "final_test_acc": final.get("test_acc"),
        "final_val_acc": final.get("val_acc"),
        "val_curve": [r["val_acc"] for r in t.history if r.get("val_acc") is not None],
        "final_train_acc": final.get("train_acc"),
        "final_train_loss": final.get("train_loss"),
        "best_val_acc": t.best_val,
        "best_epoch": t.best_epoch if t.best_val is not None else t.epoch,
        "train_time_s": sum(r["epoch_time"] for r in t.history),
        "params": count_parameters(t.model),
        "loss_params": count_parameters(t.losses),
        "model": t.config.model.name,
        "losses": [s.name for s in t.slots],
        "dataset": t.config.data.name,
        "splits": t.data.splits,
        "num_classes": t.data.num_classes,
        "seed": t.config.seed,
        "device": str(t.device),
        "processes": t.world_size,
        "torch": torch.__version__,
    }


def resume_line(t: Trainer, path: Path) -> str:
    """Where a resumed run continues: mid-epoch (after Ctrl-C or a signal) or after an epoch."""
    total = t.config.epochs
    partial = t._partial
    if partial is not None:
        step = int(partial["step"])
        return (
            f"resuming {path} in epoch {t.epoch + 1} of {total} at step "
            f"{step + 1}/{t.steps_per_epoch} (global step {t.global_step + 1})"
        )
    return (
        f"resuming {path} after epoch {t.epoch} of {total}: epoch {t.epoch + 1} "
        f"starts at global step {t.global_step + 1}"
    )


def rounded(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row with floats at 6 significant digits (float32 noise is not information)."""
    return {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in row.items()}


def check_world_size(saved: int, source: str) -> None:
    """A run resumes with the number of processes it was started with (``CheckpointError``).

    ``batch_size`` is per process, so another count changes the steps per epoch and with them
    the learning-rate schedule.
    """
    world = get_world_size()
    if saved != world:
        launch = "without --nproc" if saved == 1 else f"with --nproc {saved} (or torchrun)"
        raise CheckpointError(
            f"{source} was written by a run of {saved} process(es) and this run has {world}; "
            f"resume it {launch}"
        )


def rank_rng_state(state: dict[str, Any]) -> Any:
    """This rank's generator states in a checkpoint (rank 0's when only those were saved)."""
    per_rank = state.get("rng_ranks")
    if isinstance(per_rank, list) and len(per_rank) == get_world_size():
        return per_rank[get_rank()]
    return state["rng"]
