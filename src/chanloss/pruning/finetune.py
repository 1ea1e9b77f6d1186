"""The output directory of ``chanloss prune`` (locked, resumable) and the fine-tune that never
hands back a worse model.

``--out`` is locked like a training run's directory (``RunDir``: a second ``prune`` into it
is refused while the first runs) and must be new or empty, unless it holds an unfinished
prune of the *same* request (``prune.partial.json``, written before fine-tuning): then the
fine-tune resumes from ``finetune/last.pt`` (what "run the same command again" after Ctrl-C
does). The model right after pruning is ``after_pruning.pt``; the fine-tune starts from it
at its own learning rate (``prune.finetune_lr``, default a tenth of the run's ``optim.lr``,
no warm-up) and validates after every epoch; its ``best.pt`` is written only when an epoch
beats the model right after pruning on validation, so ``pruned.pt`` is the best of {right
after pruning, each fine-tune epoch}.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chanloss.core.errors import PruneError

PARTIAL = "prune.partial.json"
AFTER_PRUNING = "after_pruning.pt"


def claim_out(out: Path, request: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """Lock ``out`` and check it: ``(run_dir, partial)`` where ``partial`` is the saved state
    of an unfinished prune of the same ``request`` (else ``None``: a fresh start)."""
    from chanloss.run.run_dir import HOLDER_FILE, LOCK_FILE, RunDir

    if out.exists() and not out.is_dir():
        raise PruneError(f"--out {out} exists and is not a directory; expected a new directory")
    run_dir = RunDir(out).acquire()
    try:
        entries = {p.name for p in out.iterdir()} - {LOCK_FILE, HOLDER_FILE}
        if not entries:
            return run_dir, None
        if PARTIAL in entries and "prune.json" not in entries:
            partial = json.loads((out / PARTIAL).read_text())
            if partial.get("request") == request:
                return run_dir, partial
            raise PruneError(
                f"--out {out} holds an unfinished prune of another request "
                f"({_differences(partial.get('request') or {}, request)}); run that command "
                "again to finish it, or choose another --out"
            )
        raise PruneError(f"--out {out} already exists and is not an empty directory")
    except BaseException:
        run_dir.abandon()
        raise


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys)


def finetune_config(config: Any, epochs: int, options: dict[str, Any], overrides: list) -> Any:
    """The fine-tune's config: the run's, ``epochs`` long, at ``prune.finetune_lr`` (default
    a tenth of the run's peak lr; an explicit ``--set optim.lr`` is kept), no warm-up."""
    from chanloss.config import apply_overrides, config_to_dict, validate_config

    raw = config_to_dict(config)
    given = {key for key, _ in overrides}
    lr = options["finetune_lr"]
    if lr is None:
        lr = raw["optim"]["lr"] / 10
    raw = {**raw, "epochs": max(1, epochs)}
    if "optim.lr" not in given or options["finetune_lr"] is not None:
        raw["optim"] = {**raw["optim"], "lr": float(lr)}
    if "schedule.warmup_epochs" not in given:
        raw["schedule"] = {**raw["schedule"], "warmup_epochs": 0}
    if "eval_every" not in given:
        raw["eval_every"] = 1  # validation after every fine-tune epoch
    return validate_config(apply_overrides(raw, overrides), source="--set")


def start_finetune(trainer: Any, out: Path) -> float | None:
    """Save the model right after pruning (held by the fine-tune's ``trainer``) as
    ``after_pruning.pt`` and as the fine-tune's epoch-0 ``last.pt`` (best so far: its
    validation accuracy); that accuracy."""
    from chanloss.run.checkpoint import save_checkpoint

    val = trainer.accuracy("val") if "val" in trainer.eval_batches else None
    trainer.best_val, trainer.best_epoch = val, 0 if val is not None else None
    state = trainer.state()
    save_checkpoint(state, out / AFTER_PRUNING)
    (out / "finetune").mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, out / "finetune" / "last.pt")
    return val


def resumed_trainer(config: Any, out: Path, verbose: bool) -> Any:
    """The fine-tune's trainer continuing from ``finetune/last.pt`` (an unfinished prune)."""
    from chanloss.run.checkpoint import load_checkpoint
    from chanloss.run.distributed import log
    from chanloss.run.run_dir import RunDir, check_start
    from chanloss.run.trainer import Trainer

    run = RunDir(out / "finetune")
    check_start(run, resume=True)
    state = load_checkpoint(run.last, map_location="cpu")
    trainer = Trainer(config, run, verbose=2 if verbose else 0, checkpoint_state=state)
    trainer.load_state(state, str(run.last))
    if verbose:
        log(trainer.resume_line(run.path))
    return trainer


def run_finetune(trainer: Any) -> Any:
    """Fine-tune with ``trainer`` to its config's epochs, its run directory locked; the run's
    result. Ctrl-C saves ``finetune/last.pt`` (:class:`TrainingInterrupted`)."""
    with trainer.run:
        trainer.run.check_free_space(
            [*trainer.model.state_dict().values(), *trainer.losses.state_dict().values()]
        )
        return trainer.fit()


def kept_accuracy(trainer: Any, path: Path) -> dict[str, float | None]:
    """Accuracy of the checkpoint at ``path`` on the val and test splits, evaluated with the
    fine-tune's ``trainer`` (same model structure, data and preprocessing)."""
    from chanloss.run.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    trainer.model.load_state_dict(state["model"])
    for slot, part in zip(trainer.slots, state["losses"], strict=True):
        slot.loss.load_state_dict(part)
    return {s: trainer.accuracy(s) if s in trainer.eval_batches else None for s in ("val", "test")}


def _copy(source: Path, target: Path) -> None:
    from chanloss.run.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(load_checkpoint(source), target)  # a temporary file + rename


def choose_kept(out: Path, after_val: float | None, epochs: int) -> dict[str, Any]:
    """Which model becomes ``pruned.pt`` (copied there): ``{"which", "why", "epoch",
    "val"}``."""
    from chanloss.run.checkpoint import load_checkpoint

    if epochs == 0:
        _copy(out / AFTER_PRUNING, out / "pruned.pt")
        return {
            "which": "right after pruning",
            "why": "no fine-tuning",
            "epoch": 0,
            "val": after_val,
        }
    best = out / "finetune" / "best.pt"
    if after_val is None:
        _copy(out / "finetune" / "last.pt", out / "pruned.pt")
        return {
            "which": f"fine-tune epoch {epochs}",
            "why": "no validation split, so nothing to choose on: the last fine-tune epoch",
            "epoch": epochs,
            "val": None,
        }
    if not best.exists():
        _copy(out / AFTER_PRUNING, out / "pruned.pt")
        return {
            "which": "right after pruning",
            "why": f"no fine-tune epoch beat its validation accuracy ({100 * after_val:.2f}%)",
            "epoch": 0,
            "val": after_val,
        }
    state = load_checkpoint(best)
    _copy(best, out / "pruned.pt")
    epoch, val = int(state["best"]["epoch"]), state["best"]["val_acc"]
    return {
        "which": f"fine-tune epoch {epoch}",
        "why": f"best validation accuracy: {100 * val:.2f}% against {100 * after_val:.2f}% "
        "right after pruning",
        "epoch": epoch,
        "val": val,
    }
