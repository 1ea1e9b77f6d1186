"""``chanloss prune``: remove whole groups of coupled channels from a trained run's model,
fine-tune without ever making it worse, measure the speed-up.

:func:`prune_checkpoint` checks everything it can before writing anything (method, speedup,
options, the checkpoint, the prunable groups, the MAC target), locks ``--out``, prunes on a
calibration subset of the training split (:mod:`chanloss.pruning.graph` for the groups and
budgets, :mod:`chanloss.pruning.cpli` and :mod:`chanloss.pruning.criteria` for the choice,
:mod:`chanloss.pruning.sequential` for the refit), measures the latency before and after, and
fine-tunes (:mod:`chanloss.pruning.finetune`). It writes ``DIR/pruned.pt`` (a weights-only
checkpoint whose ``"pruning"`` entry replays the group pruning), ``DIR/after_pruning.pt``,
``DIR/finetune/`` (a run directory) and ``DIR/prune.json``. The validation split chooses
CPLI's mixing weight and the kept model and nothing else; the test split is only reported.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from chanloss.pruning import inputs
from chanloss.pruning.cpli import MIX_GRID, all_scores, cpli_chooser, writers_of_pruned
from chanloss.pruning.criteria import BASELINES, baseline_importance, top_channels
from chanloss.pruning.finetune import (
    PARTIAL,
    choose_kept,
    claim_out,
    finetune_config,
    run_finetune,
    start_finetune,
)
from chanloss.pruning.graph import (
    PruneError,
    PruneGroup,
    count_macs,
    find_groups,
    make_record,
    mc_groups,
    plan_counts,
    prune_groups,
)
from chanloss.pruning.report import format_table, latency_entry, measure_latency
from chanloss.pruning.sequential import prune_in_order

METHODS = ("cpli", *BASELINES)


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
    from chanloss.config import parse_overrides

    started = time.perf_counter()
    say = inputs.printer(verbose)
    if method not in METHODS:
        raise PruneError(f"unknown --method {method!r}; expected one of {', '.join(METHODS)}")
    if not isinstance(speedup, int | float) or not math.isfinite(speedup) or speedup <= 1:
        raise PruneError(f"--speedup must be a number > 1 (MACs before / after), got {speedup}")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int):
        raise PruneError(f"--finetune-epochs must be an integer >= 0, got {finetune_epochs!r}")
    if finetune_epochs < 0:
        raise PruneError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    refit = method == "cpli" if refit is None else bool(refit)
    parsed = parse_overrides(list(overrides))
    options, config_overrides = inputs.split_overrides(parsed)
    request = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "method": method,
        "speedup": float(speedup),
        "finetune_epochs": finetune_epochs,
        "overrides": list(overrides),
        "prune_features": bool(prune_features),
        "refit": refit,
    }
    out = Path(out_dir)
    run_dir, partial = claim_out(out, request)
    try:
        if partial is None:
            result, tune_config = _prune(
                checkpoint,
                out,
                method,
                speedup,
                finetune_epochs,
                options,
                config_overrides,
                prune_features,
                refit,
                device,
                say,
                request,
            )
        else:
            say(f"{out} holds this prune, unfinished: continuing its fine-tune")
            result = partial["result"]
            tune_config = _tune_config(result, finetune_epochs, options, config_overrides)
        _finish(result, tune_config, out, finetune_epochs, verbose, started)
    except BaseException:
        if not (out / PARTIAL).exists() and not (out / "pruned.pt").exists():
            run_dir.abandon()  # nothing of ours is left behind
        else:
            run_dir.release()
        raise
    run_dir.release()
    say(f"wrote {out / 'pruned.pt'} (and prune.json, after_pruning.pt, finetune/ in {out})")
    return result


def _tune_config(result: dict[str, Any], epochs: int, options: dict, overrides: list) -> Any:
    from chanloss.config import validate_config

    return finetune_config(validate_config(result["config"]), epochs, options, overrides)


@dataclass
class _Job:
    """What pruning reads: the run, its model, the calibration and validation images, groups."""

    checkpoint: Path
    state: dict[str, Any]
    config: Any
    trainer: Any
    model: nn.Module
    scores: Any
    calibration: Any
    holdout: list
    holdout_name: str
    example: Tensor
    groups: list[PruneGroup]
    feature: PruneGroup | None
    mc_classes: int | None


def _load(checkpoint, out: Path, options, prune_features: bool, device: str) -> _Job:
    """Read the run and find its groups; every check that needs the model happens here."""
    from chanloss.core.errors import CheckpointError
    from chanloss.run.loader import load_run, read_checkpoint

    stored = read_checkpoint(checkpoint, device=device)
    checkpoint, state, config = stored.path, stored.state, stored.config
    if "model" not in state or "losses" not in state:
        raise CheckpointError(f"{checkpoint} is not a run's checkpoint (no model and loss weights)")
    if state.get("pruning") is not None:
        raise PruneError(
            f"{checkpoint} is already pruned; prune the run's original checkpoint instead"
        )
    trainer = load_run(stored, with_data=True, out_dir=out / "finetune").trainer
    model = trainer.model.eval()
    scores = inputs.scorer(trainer)
    calibration, holdout, holdout_name = inputs.calibration_images(trainer, options, scores)
    example = calibration.batches[0][0][:1].detach().clone()
    groups = find_groups(model, example)
    feature = next((g for g in groups if g.is_feature), None)
    mc_classes = inputs.feature_policy(trainer, feature, prune_features, checkpoint)
    if not prune_features:
        groups = [g for g in groups if not g.is_feature]
    if not groups:
        raise PruneError(
            f"{config.model.name} has no prunable group of channels"
            + ("" if prune_features else "; --prune-features also prunes the feature map's")
        )
    return _Job(
        checkpoint,
        state,
        config,
        trainer,
        model,
        scores,
        calibration,
        holdout,
        holdout_name,
        example,
        groups,
        feature,
        mc_classes,
    )


def _prune(
    checkpoint: str | Path,
    out: Path,
    method: str,
    speedup: float,
    finetune_epochs: int,
    options: dict[str, Any],
    config_overrides: list,
    prune_features: bool,
    refit: bool,
    device: str,
    say: Any,
    request: dict[str, Any],
) -> tuple[dict[str, Any], Any]:
    """Everything up to the fine-tune: prune, measure, write ``after_pruning.pt`` and the
    partial state; (the result so far, the fine-tune's config)."""
    from chanloss.run.run_dir import write_json

    job = _load(checkpoint, out, options, prune_features, device)
    tune_config = finetune_config(job.config, finetune_epochs, options, config_overrides)
    plan = _Plan(job.model, job.groups, speedup, job.example, options, job.mc_classes)
    if not options["global"]:
        plan.counts_for(None)  # an unreachable target fails here, before anything is written
    say(
        f"pruning {job.checkpoint} ({job.config.model.name}, {len(job.groups)} groups of "
        f"coupled channels, {sum(g.members for g in job.groups)} layer operations) by "
        f"{method}{' + refit' if refit else ''} to {speedup:g}x fewer MACs; calibration "
        f"{job.calibration.size} training images; widths in multiples of {options['round_to']}"
        f"{'; one global ranking' if options['global'] else ''}"
    )
    accuracy = {"original": inputs.accuracies(job.model, job.scores, job.trainer, job.holdout)}
    prune_started, prune_cpu = time.perf_counter(), time.process_time()
    pruned, kept_all, mix, mix_scores = _choose_and_prune(job, method, plan, refit, options, say)
    prune_seconds = time.perf_counter() - prune_started
    prune_cpu_seconds = time.process_time() - prune_cpu
    accuracy["pruned"] = inputs.accuracies(pruned, job.scores, job.trainer, job.holdout)
    timing = measure_latency(
        {"original": job.model, "pruned": pruned}, job.example, int(options["latency_repeats"])
    )
    result = _result(job, method, refit, speedup, pruned, kept_all, options, prune_features)
    result.update(
        accuracy=accuracy,
        cpli_mix=mix,
        cpli_mix_scores=mix_scores or None,
        latency_ms=latency_entry(timing, int(options["latency_repeats"])),
        finetune_epochs=finetune_epochs,
        finetune_lr=tune_config.optim.lr if finetune_epochs else None,
        time_s={"prune": prune_seconds, "prune_cpu": prune_cpu_seconds},
    )
    tuner = _tuner(job, pruned, kept_all, method, tune_config if finetune_epochs > 0 else None, out)
    out.mkdir(parents=True, exist_ok=True)
    result["after_pruning_val"] = start_finetune(tuner, out)
    write_json(out / PARTIAL, {"request": request, "result": result})
    return result, tune_config


def _result(job: _Job, method, refit, speedup, pruned, kept_all, options, prune_features):
    from chanloss.config import config_to_dict

    macs_before, params_before = count_macs(job.model, job.example)
    macs_after, params_after = count_macs(pruned, job.example)
    return {
        "checkpoint": str(job.checkpoint),
        "method": method,
        "refit": refit,
        "speedup_target": speedup,
        "speedup": macs_before / macs_after,
        "macs": {"before": macs_before, "after": macs_after},
        "params": {"before": params_before, "after": params_after},
        "round_to": options["round_to"],
        "global": options["global"],
        "groups": [
            {
                "root": g.root,
                "layers": g.members,
                "kept": len(kept_all[g.root]),
                "total": g.channels,
                "feature": g.is_feature,
            }
            for g in job.groups
        ],
        "pruned_features": bool(prune_features and job.feature is not None),
        "validation_for_choices": job.holdout_name,
        "calibration_images": job.calibration.size,
        "config": config_to_dict(job.config),
    }


def _tuner(job: _Job, pruned, kept_all, method, tune_config, out: Path) -> Any:
    """The fine-tune's trainer holding the pruned model (and the losses' re-sliced state)."""
    from chanloss.run.trainer import Trainer

    record = make_record(job.groups, kept_all, job.example, method)
    tuner = Trainer(
        tune_config if tune_config is not None else job.config,
        out / "finetune",
        verbose=0,
        checkpoint_state={"pruning": record},
    )
    tuner.model.load_state_dict(pruned.state_dict())
    loss_states = inputs.loss_states(job.trainer, job.state["losses"], job.feature, kept_all)
    for slot, sd in zip(tuner.slots, loss_states, strict=True):
        slot.loss.load_state_dict(sd)
    return tuner


class _Plan:
    """Channels per group: one keep ratio (found once), or a global ranking of given scores."""

    def __init__(self, model, groups, speedup, example, options, mc_classes) -> None:
        self.args = (model, groups, speedup, example)
        self.round_to, self.mc_classes = int(options["round_to"]), mc_classes
        self.uniform: dict[str, int] | None = None

    def counts_for(self, scores: dict[str, Tensor] | None) -> dict[str, int]:
        if scores is None and self.uniform is not None:
            return self.uniform
        counts = plan_counts(
            *self.args, round_to=self.round_to, mc_classes=self.mc_classes, scores=scores
        )[0]
        if scores is None:
            self.uniform = counts
        return counts


def _choose_and_prune(
    job: _Job, method: str, plan: _Plan, refit: bool, options: dict[str, Any], say: Any
) -> tuple[nn.Module, dict[str, list[int]], float | None, dict[str, Any]]:
    """Prune a copy of the model: (pruned, kept channels per group, CPLI's mix, mix scores)."""
    model, groups, calibration, example = job.model, job.groups, job.calibration, job.example
    feature = next((g.root for g in groups if g.is_feature), None)
    targets: dict[str, list[Tensor]] = {}  # the original readers' outputs, shared by trials
    common = dict(targets=targets, original=model, feature=feature, refit=refit)
    if method != "cpli":
        return _baseline_prune(job, method, plan, options, say, common)
    grid = MIX_GRID if options["mix"] is None else (float(options["mix"]),)
    best = None
    mix_scores: dict[str, Any] = {}
    for mix in grid:
        counts = plan.counts_for(
            all_scores(model, groups, calibration, mix) if options["global"] else None
        )
        trial = copy.deepcopy(model)
        kept = prune_in_order(
            trial,
            groups,
            calibration,
            example,
            choose=cpli_chooser(mix, counts, plan.mc_classes, writers_of_pruned(groups, counts)),
            needs_capture=True,
            needs_grad=True,
            progress=say if len(grid) == 1 or mix == grid[0] else None,
            **common,
        )
        acc = inputs.accuracy(trial, job.scores, job.holdout) if len(grid) > 1 else None
        mix_scores[str(mix)] = acc
        if len(grid) > 1:
            say(f"cpli mix {mix:g}: {job.holdout_name} accuracy {100 * acc:.2f}%")
        if best is None or (acc is not None and acc > best[0]):
            best = (acc if acc is not None else 0.0, mix, trial, kept)
    _, mix, pruned, kept = best
    return pruned, kept, mix, mix_scores


def _baseline_prune(
    job: _Job, method: str, plan: _Plan, options: dict[str, Any], say: Any, common: dict
) -> tuple[nn.Module, dict[str, list[int]], None, dict[str, Any]]:
    """Prune a copy of the model by a baseline criterion (scored once on the original)."""
    model, groups, calibration, example = job.model, job.groups, job.calibration, job.example
    feature = common["feature"]
    importance = baseline_importance(method, model, groups, calibration, int(options["seed"]))
    counts = plan.counts_for(importance if options["global"] else None)

    def choose(group: PruneGroup, seen: Any) -> list[int]:
        return top_channels(importance[group.root], counts[group.root], _parts(group, plan))

    pruned = copy.deepcopy(model)
    if common["refit"]:
        kept = prune_in_order(
            pruned,
            groups,
            calibration,
            example,
            choose=choose,
            needs_capture=False,
            needs_grad=False,
            progress=say,
            **common,
        )
    else:
        kept = {g.root: choose(g, None) for g in groups}
        prune_groups(pruned, kept, example, feature)
        for i, g in enumerate(groups):
            say(
                f"group {i + 1}/{len(groups)} {g.root} ({g.members} layers): kept "
                f"{len(kept[g.root])}/{g.channels}"
            )
    return pruned, kept, None, {}


def _parts(group: PruneGroup, plan: _Plan) -> list[range] | None:
    if group.is_feature and plan.mc_classes:
        return mc_groups(group.channels, plan.mc_classes)
    return None


def _finish(
    result: dict[str, Any],
    tune_config: Any,
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
                f"fine-tuning {epochs} epoch(s) at lr {tune_config.optim.lr:g} from the model "
                "right after pruning"
                + ("" if val is None else f" (validation {100 * val:.2f}%, epoch 0)"),
                flush=True,
            )
        summary = run_finetune(tune_config, out, verbose)
        result["accuracy"]["finetuned"] = {
            "val": summary.get("final_val_acc"),
            "test": summary.get("final_test_acc"),
            "val_curve": summary.get("val_curve"),
        }
    kept = choose_kept(out, result["after_pruning_val"], epochs)
    result["kept"] = kept
    result["accuracy"]["kept"] = (
        result["accuracy"]["pruned"] if kept["epoch"] == 0 else _evaluate(out / "pruned.pt")
    )
    result["time_s"]["finetune"] = time.perf_counter() - tuned_started if epochs else 0.0
    result["time_s"]["total"] = time.perf_counter() - started
    write_json(out / "prune.json", result)
    (out / PARTIAL).unlink(missing_ok=True)
    if verbose:
        print(format_table(result), flush=True)


def _evaluate(path: Path) -> dict[str, float | None]:
    """Accuracy of the checkpoint at ``path`` on its run's val and test splits."""
    from chanloss.run.loader import load_run

    trainer = load_run(path, device=None, with_data=True, out_dir=path.parent / "finetune").trainer
    return {s: trainer.accuracy(s) if s in trainer.eval_batches else None for s in ("val", "test")}
