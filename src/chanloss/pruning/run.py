"""``chanloss prune``: remove whole groups of coupled channels from a trained run's model,
fine-tune without ever making it worse, measure the speed-up.

:func:`prune_checkpoint` runs three steps. The plan (:mod:`chanloss.pruning.plan`) checks
everything it can before writing anything (method, speedup, options, the checkpoint, the
prunable groups, the MAC target), loads the run's data once and takes the calibration images
from its training split; then ``--out`` is locked. The prune (:mod:`chanloss.pruning.choose`:
:mod:`chanloss.pruning.graph` for the groups and budgets, :mod:`chanloss.pruning.cpli` and
:mod:`chanloss.pruning.criteria` for the choice, :mod:`chanloss.pruning.sequential` for the
refit) works on a copy of the model, and the latency is measured before and after. ONE
trainer, built for the pruned model, saves the model right after pruning and fine-tunes it
(:mod:`chanloss.pruning.finetune`). It writes ``DIR/pruned.pt`` (a weights-only checkpoint
whose ``"pruning"`` entry replays the group pruning), ``DIR/after_pruning.pt``,
``DIR/finetune/`` (a run directory) and ``DIR/prune.json``. The validation split chooses
CPLI's mixing weight and the kept model and nothing else; the test split is only reported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chanloss.pruning import inputs
from chanloss.pruning.choose import Pruned, prune_model
from chanloss.pruning.finetune import (
    PARTIAL,
    choose_kept,
    claim_out,
    finetune_config,
    kept_accuracy,
    resumed_trainer,
    run_finetune,
    start_finetune,
)
from chanloss.pruning.graph import count_macs, make_record
from chanloss.pruning.plan import METHODS, PrunePlan, check_request, plan_prune
from chanloss.pruning.report import format_table, latency_entry, measure_latency
from chanloss.pruning.scoring import accuracies

__all__ = ["METHODS", "prune_checkpoint"]


def prune_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    method: str = "cpli",
    speedup: float = 2.0,
    finetune_epochs: int = 0,
    overrides: Sequence[str] = (),
    prune_features: bool = False,
    refit: bool | None = None,
    device: str = "cpu",
    verbose: bool = True,
) -> dict[str, Any]:
    """Prune ``checkpoint`` to ``speedup`` times fewer MACs into ``out_dir``; the prune.json
    contents. ``refit`` (default: on for cpli only) re-fits the readers of each pruned group
    by least squares. Bad input is a :class:`PruneError` (or ``CheckpointError``/
    ``ConfigError``) raised before anything is written."""
    started = time.perf_counter()
    say = inputs.printer(verbose)
    request = check_request(
        checkpoint,
        method=method,
        speedup=speedup,
        finetune_epochs=finetune_epochs,
        overrides=overrides,
        prune_features=prune_features,
        refit=refit,
        device=device,
    )
    out = Path(out_dir)
    run_dir, partial = claim_out(out, request.key())
    try:
        if partial is None:
            result, trainer = _prune(plan_prune(request), out, say, verbose)
        else:
            say(f"{out} holds this prune, unfinished: continuing its fine-tune")
            result = partial["result"]
            trainer = _resume(result, request, out, verbose)
        _finish(result, trainer, out, finetune_epochs, verbose, started)
    except BaseException:
        if not (out / PARTIAL).exists() and not (out / "pruned.pt").exists():
            run_dir.abandon()  # nothing of ours is left behind
        else:
            run_dir.release()
        raise
    run_dir.release()
    say(f"wrote {out / 'pruned.pt'} (and prune.json, after_pruning.pt, finetune/ in {out})")
    return result


def _resume(result: dict[str, Any], request: Any, out: Path, verbose: bool) -> Any:
    """The fine-tune's trainer of an unfinished prune (``None`` without fine-tune epochs)."""
    from chanloss.config import validate_config

    if request.finetune_epochs == 0:
        return None
    config = finetune_config(
        validate_config(result["config"]),
        request.finetune_epochs,
        request.options,
        request.config_overrides,
    )
    return resumed_trainer(config, out, verbose)


def _prune(plan: PrunePlan, out: Path, say: Any, verbose: bool) -> tuple[dict[str, Any], Any]:
    """Prune, measure, build the fine-tune's trainer, write ``after_pruning.pt`` and the
    partial state; (the result so far, the trainer)."""
    from chanloss.run.run_dir import write_json

    request, options = plan.request, plan.request.options
    say(
        f"pruning {plan.checkpoint} ({plan.config.model.name}, {len(plan.groups)} groups of "
        f"coupled channels, {sum(g.members for g in plan.groups)} layer operations) by "
        f"{request.method}{' + refit' if request.refit else ''} to {request.speedup:g}x fewer "
        f"MACs; calibration {plan.calibration.size} training images; widths in multiples of "
        f"{options['round_to']}{'; one global ranking' if options['global'] else ''}"
    )
    accuracy = {"original": accuracies(plan.model, plan.scoring, plan.holdout)}
    prune_started, prune_cpu = time.perf_counter(), time.process_time()
    pruned = prune_model(plan, say)
    prune_seconds = time.perf_counter() - prune_started
    prune_cpu_seconds = time.process_time() - prune_cpu
    accuracy["pruned"] = accuracies(pruned.model, plan.scoring, plan.holdout)
    repeats = int(options["latency_repeats"])
    timing = measure_latency(
        {"original": plan.model, "pruned": pruned.model}, plan.example, repeats
    )
    epochs = request.finetune_epochs
    result = _result(plan, pruned)
    result.update(
        accuracy=accuracy,
        cpli_mix=pruned.mix,
        cpli_mix_scores=pruned.mix_scores or None,
        latency_ms=latency_entry(timing, repeats),
        finetune_epochs=epochs,
        finetune_lr=plan.tune_config.optim.lr if epochs else None,
        time_s={"prune": prune_seconds, "prune_cpu": prune_cpu_seconds},
    )
    trainer = _finetune_trainer(plan, pruned, out, verbose)
    out.mkdir(parents=True, exist_ok=True)
    result["after_pruning_val"] = start_finetune(trainer, out)
    write_json(out / PARTIAL, {"request": request.key(), "result": result})
    return result, trainer


def _result(plan: PrunePlan, pruned: Pruned) -> dict[str, Any]:
    """prune.json's description of what was pruned: MACs, parameters, groups, the config."""
    from chanloss.config import config_to_dict

    request, options = plan.request, plan.request.options
    macs_before, params_before = count_macs(plan.model, plan.example)
    macs_after, params_after = count_macs(pruned.model, plan.example)
    return {
        "checkpoint": str(plan.checkpoint),
        "method": request.method,
        "refit": request.refit,
        "speedup_target": request.speedup,
        "speedup": macs_before / macs_after,
        "macs": {"before": macs_before, "after": macs_after},
        "params": {"before": params_before, "after": params_after},
        "round_to": options["round_to"],
        "global": options["global"],
        "groups": [
            {
                "root": g.root,
                "layers": g.members,
                "kept": len(pruned.kept[g.root]),
                "total": g.channels,
                "feature": g.is_feature,
            }
            for g in plan.groups
        ],
        "pruned_features": bool(request.prune_features and plan.feature is not None),
        "validation_for_choices": plan.holdout_name,
        "calibration_images": plan.calibration.size,
        "config": config_to_dict(plan.config),
    }


def _finetune_trainer(plan: PrunePlan, pruned: Pruned, out: Path, verbose: bool) -> Any:
    """The one trainer of the fine-tune, built for the pruned model: its weights and the
    losses' state (CC-Loss's attention re-sliced to the kept feature channels) loaded."""
    from chanloss.run.run_dir import RunDir
    from chanloss.run.trainer import Trainer

    epochs = plan.request.finetune_epochs
    record = make_record(plan.groups, pruned.kept, plan.example, plan.request.method)
    config = plan.tune_config if epochs > 0 else plan.config
    scored = plan.scoring.evaluator.config  # the plan's data is reused when it is the same
    same_data = config.data == scored.data and config.seed == scored.seed
    trainer = Trainer(
        config,
        RunDir(out / "finetune"),
        verbose=2 if verbose and epochs > 0 else 0,
        checkpoint_state={"pruning": record},
        data=plan.scoring.data if same_data else None,
    )
    trainer.model.load_state_dict(pruned.model.state_dict())
    num_classes = plan.scoring.data.num_classes
    states = inputs.loss_states(
        plan.slots, num_classes, plan.config, plan.state["losses"], plan.feature, pruned.kept
    )
    for slot, sd in zip(trainer.slots, states, strict=True):
        slot.loss.load_state_dict(sd)
    return trainer


def _finish(
    result: dict[str, Any],
    trainer: Any,
    out: Path,
    epochs: int,
    verbose: bool,
    started: float,
) -> None:
    """Fine-tune (or continue), choose the kept model, write pruned.pt and prune.json."""
    from chanloss.run.run_dir import write_json

    tuned_started = time.perf_counter()
    result["accuracy"]["finetuned"] = None
    if epochs > 0:
        if verbose:
            val = result["after_pruning_val"]
            print(
                f"fine-tuning {epochs} epoch(s) at lr {trainer.config.optim.lr:g} from the model "
                "right after pruning"
                + ("" if val is None else f" (validation {100 * val:.2f}%, epoch 0)"),
                flush=True,
            )
        summary = run_finetune(trainer)
        result["accuracy"]["finetuned"] = {
            "val": summary.get("final_val_acc"),
            "test": summary.get("final_test_acc"),
            "val_curve": summary.get("val_curve"),
        }
    kept = choose_kept(out, result["after_pruning_val"], epochs)
    result["kept"] = kept
    result["accuracy"]["kept"] = (
        result["accuracy"]["pruned"]
        if kept["epoch"] == 0
        else kept_accuracy(trainer, out / "pruned.pt")
    )
    result["time_s"]["finetune"] = time.perf_counter() - tuned_started if epochs else 0.0
    result["time_s"]["total"] = time.perf_counter() - started
    write_json(out / "prune.json", result)
    (out / PARTIAL).unlink(missing_ok=True)
    if verbose:
        print(format_table(result), flush=True)
