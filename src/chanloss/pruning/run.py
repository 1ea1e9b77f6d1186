"""``chanloss prune``: remove channels of a trained run's model, fine-tune, report.

:func:`prune_checkpoint` checks everything it can before writing anything (method, speedup,
the checkpoint, the prunable layers, the MAC target), then prunes on a calibration subset of
the training split, fine-tunes with the run's own losses and recipe for ``finetune_epochs``
(``DIR/finetune/``, a run directory ``chanloss train --resume`` continues), and writes
``DIR/pruned.pt`` (a weights-only checkpoint with the kept channels in ``"pruning"``) and
``DIR/prune.json``. The validation split chooses CPLI's mixing weight and nothing else; the
test split is only reported.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from chanloss.pruning.cpli import MIX_GRID, cpli_prune
from chanloss.pruning.criteria import (
    Calibration,
    bn_scale_importance,
    l1_importance,
    random_importance,
    taylor_importance,
    top_channels,
)
from chanloss.pruning.graph import (
    PrunableLayer,
    PruneError,
    count_macs,
    find_prunable,
    make_record,
    mc_groups,
    plan_keep_counts,
    prune_to,
    same_layers,
)

METHODS = ("cpli", "l1", "bn_scale", "taylor", "random")
#: ``--set prune.KEY=VALUE`` options and their defaults.
PRUNE_OPTIONS: dict[str, Any] = {
    "calibration_images": 256,  # training images the criteria and CPLI read
    "holdout_images": 512,  # training images that stand in for validation when there is none
    "mix": None,  # CPLI's mixing weight; None: chosen on validation from MIX_GRID
    "latency_repeats": 10,
    "seed": 0,
}
_PARAMETER_FREE_OK = ("mc", "cc")  # channel losses --prune-features knows how to follow


def prune_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    method: str = "cpli",
    speedup: float = 2.0,
    finetune_epochs: int = 0,
    overrides: Sequence[str] = (),
    prune_features: bool = False,
    device: str = "cpu",
    verbose: bool = True,
) -> dict[str, Any]:
    """Prune ``checkpoint`` to ``speedup`` times fewer MACs into ``out_dir``; the prune.json
    contents. Bad input is a :class:`PruneError` (or ``CheckpointError``/``ConfigError``)
    raised before anything is written."""
    from chanloss.errors import CheckpointError
    from chanloss.training.config import (
        apply_overrides,
        config_to_dict,
        parse_overrides,
        validate_config,
    )
    from chanloss.training.trainer import Trainer

    started = time.perf_counter()
    say = _printer(verbose)
    if method not in METHODS:
        raise PruneError(f"unknown --method {method!r}; expected one of {', '.join(METHODS)}")
    if not isinstance(speedup, int | float) or not math.isfinite(speedup) or speedup <= 1:
        raise PruneError(f"--speedup must be a number > 1 (MACs before / after), got {speedup}")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int):
        raise PruneError(f"--finetune-epochs must be an integer >= 0, got {finetune_epochs!r}")
    if finetune_epochs < 0:
        raise PruneError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    options, config_overrides = _split_overrides(parse_overrides(list(overrides)))
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PruneError(f"--out {out} already exists and is not an empty directory")

    from chanloss.training.loader import load_run, read_checkpoint

    stored = read_checkpoint(checkpoint, device=device)
    checkpoint, state, config = stored.path, stored.state, stored.config
    if "model" not in state or "losses" not in state:
        raise CheckpointError(f"{checkpoint} is not a run's checkpoint (no model and loss weights)")
    if state.get("pruning") is not None:
        raise PruneError(
            f"{checkpoint} is already pruned; prune the run's original checkpoint instead"
        )
    tune_raw = apply_overrides(
        {**config_to_dict(config), "epochs": max(1, finetune_epochs)}, config_overrides
    )
    tune_config = validate_config(tune_raw, source="--set")
    trainer = load_run(stored, with_data=True, out_dir=out / "finetune").trainer
    model = trainer.model.eval()
    scores = _scorer(trainer)
    calibration, holdout, holdout_name = _calibration(trainer, options, scores)
    example = calibration.batches[0][0][:1].detach().clone()

    layers = find_prunable(model, example)
    feature = next((x for x in layers if x.is_feature), None)
    mc_classes = _feature_policy(trainer, layers, feature, prune_features, checkpoint)
    if not prune_features:
        layers = [x for x in layers if not x.is_feature]
    if not layers:
        raise PruneError(
            f"{config.model.name} has no prunable layer (every convolution's channels are tied "
            "to a residual sum or read by several layers"
            + ("" if prune_features else "; --prune-features also prunes the feature layer")
            + ")"
        )
    counts, macs_before, _ = plan_keep_counts(model, layers, speedup, example, mc_classes)
    params_before = count_macs(model, example)[1]

    # -- nothing was written up to here --------------------------------------------------------
    say(
        f"pruning {checkpoint} ({config.model.name}, {len(layers)} prunable layers) by {method} "
        f"to {speedup:g}x fewer MACs; calibration {calibration.size} training images"
    )
    accuracy = {"original": _accuracies(model, scores, trainer, holdout)}
    latency_before = measure_latency(model, example, options["latency_repeats"])
    original = copy.deepcopy(model)
    prune_started, prune_cpu = time.perf_counter(), time.process_time()
    chosen_mix, mix_scores = None, {}
    if method == "cpli":
        grid = MIX_GRID if options["mix"] is None else (float(options["mix"]),)
        best = None
        targets: dict[str, list[Tensor]] = {}  # the original readers' outputs, shared by trials
        for mix in grid:
            trial = copy.deepcopy(original)
            kept = cpli_prune(
                trial,
                same_layers(trial, layers),
                counts,
                calibration,
                example,
                mix=mix,
                mc_classes=mc_classes,
                targets=targets,
                progress=say if len(grid) == 1 or mix == grid[0] else None,
            )
            acc = _accuracy(trial, scores, holdout) if len(grid) > 1 else None
            mix_scores[str(mix)] = acc
            if len(grid) > 1:
                say(f"cpli mix {mix:g}: {holdout_name} accuracy {100 * acc:.2f}%")
            if best is None or (acc is not None and acc > best[0]):
                best = (acc if acc is not None else 0.0, mix, trial, kept)
        _, chosen_mix, pruned, kept_all = best
    else:
        importance = _baseline_importance(method, original, layers, calibration, options)
        kept_all = {}
        for index, layer in enumerate(layers):
            groups = (
                mc_groups(layer.channels, mc_classes) if layer.is_feature and mc_classes else None
            )
            kept_all[layer.name] = top_channels(importance[layer.name], counts[layer.name], groups)
            say(
                f"layer {index + 1}/{len(layers)} {layer.name}: kept "
                f"{len(kept_all[layer.name])}/{layer.channels}"
            )
        pruned = copy.deepcopy(original)
        prune_to(pruned, same_layers(pruned, layers), kept_all, example)
    prune_seconds = time.perf_counter() - prune_started
    prune_cpu_seconds = time.process_time() - prune_cpu
    record = make_record(layers, kept_all, example, method)
    macs_after, params_after = count_macs(pruned, example)
    accuracy["pruned"] = _accuracies(pruned, scores, trainer, holdout)
    latency_after = measure_latency(pruned, example, options["latency_repeats"])
    loss_states = _loss_states(trainer, state["losses"], feature, kept_all)

    out.mkdir(parents=True, exist_ok=True)
    tuned_started = time.perf_counter()
    tuner = Trainer(
        tune_config if finetune_epochs > 0 else config,
        out / "finetune",
        verbose=2 if verbose else 0,
        checkpoint_state={"pruning": record},
    )
    tuner.model.load_state_dict(pruned.state_dict())
    for slot, sd in zip(tuner.slots, loss_states, strict=True):
        slot.loss.load_state_dict(sd)
    accuracy["finetuned"] = None
    if finetune_epochs > 0:
        tuner.fit()
        accuracy["finetuned"] = _accuracies(tuner.model.eval(), _scorer(tuner), tuner, None)
    saved = tuner.state()
    finetune_seconds = time.perf_counter() - tuned_started if finetune_epochs > 0 else 0.0
    from chanloss.training.checkpoint import save_checkpoint
    from chanloss.training.run_dir import write_json

    save_checkpoint(saved, out / "pruned.pt")
    result = {
        "checkpoint": str(checkpoint),
        "method": method,
        "speedup_target": speedup,
        "speedup": macs_before / macs_after,
        "macs": {"before": macs_before, "after": macs_after},
        "params": {"before": params_before, "after": params_after},
        "layers": [
            {"name": x.name, "kept": len(kept_all[x.name]), "total": x.channels} for x in layers
        ],
        "pruned_features": bool(prune_features and feature is not None),
        "accuracy": accuracy,
        "validation_for_choices": holdout_name,
        "cpli_mix": chosen_mix,
        "cpli_mix_scores": mix_scores or None,
        "latency_ms": {
            "before": latency_before,
            "after": latency_after,
            "threads": torch.get_num_threads(),
        },
        "calibration_images": calibration.size,
        "finetune_epochs": finetune_epochs,
        "time_s": {
            "prune": prune_seconds,
            "prune_cpu": prune_cpu_seconds,
            "finetune": finetune_seconds,
            "total": time.perf_counter() - started,
        },
    }
    write_json(out / "prune.json", result)
    if verbose:
        print(format_table(result), flush=True)
    return result


def _printer(verbose: bool):
    def say(line: str) -> None:
        if verbose:
            print(line, flush=True)

    return say


def _split_overrides(items: list[tuple[str, Any]]) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    options = dict(PRUNE_OPTIONS)
    rest = []
    for key, value in items:
        if not key.startswith("prune."):
            rest.append((key, value))
            continue
        name = key.removeprefix("prune.")
        if name not in PRUNE_OPTIONS:
            raise PruneError(
                f"--set {key}: unknown pruning option; expected one of "
                f"{', '.join('prune.' + k for k in PRUNE_OPTIONS)}"
            )
        if name == "mix":
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1
            ):
                raise PruneError(
                    f"--set prune.mix must be a number in [0, 1] or null, got {value!r}"
                )
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PruneError(f"--set {key} must be an integer >= 1, got {value!r}")
        options[name] = value
    return options, rest


def _scorer(trainer: Any):
    def scores(model: nn.Module, x: Tensor) -> Tensor:
        return trainer.class_scores(model(x))

    return scores


def _calibration(
    trainer: Any, options: dict[str, Any], scores: Any
) -> tuple[Calibration, list[tuple[Tensor, Tensor]], str]:
    """Calibration batches from the training split (seeded shuffle, evaluation preprocessing);
    the validation batches (the val split, or held-out training images when there is none)."""
    from chanloss.training.builders import Batches

    want = int(options["calibration_images"])
    holdout_want = 0 if trainer.data.val is not None else int(options["holdout_images"])
    source = Batches(
        trainer.data.train,
        batch_size=64,
        device=trainer.device,
        train=True,
        seed=int(options["seed"]),
    )
    calibration, holdout, taken = [], [], 0
    with torch.no_grad():
        for x, y in source.epoch(0):
            x = trainer._prepare(x, trainer.eval_aug)
            if taken < want:
                n = min(want - taken, y.shape[0])
                calibration.append((x[:n], y[:n]))
                x, y = x[n:], y[n:]
                taken += n
            if y.shape[0] and sum(b[1].shape[0] for b in holdout) < holdout_want:
                holdout.append((x, y))
            if taken >= want and sum(b[1].shape[0] for b in holdout) >= holdout_want:
                break
    source.close()
    if trainer.data.val is not None:
        holdout = [
            (trainer._prepare(x, trainer.eval_aug), y)
            for x, y in trainer.eval_batches["val"].epoch()
        ]
        name = "validation split"
    else:
        name = (
            f"{sum(b[1].shape[0] for b in holdout)} held-out training images (no validation split)"
        )
    return Calibration(calibration, scores), holdout, name


@torch.no_grad()
def _accuracy(
    model: nn.Module, scores: Any, batches: Sequence[tuple[Tensor, Tensor]]
) -> float | None:
    if not batches:
        return None
    model.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((scores(model, x).argmax(1) == y).sum())
        total += int(y.shape[0])
    return correct / max(total, 1)


def _accuracies(model: nn.Module, scores: Any, trainer: Any, holdout: Any) -> dict[str, Any]:
    out = {}
    for split in ("val", "test"):
        if split in trainer.eval_batches:
            batches = [
                (trainer._prepare(x, trainer.eval_aug), y)
                for x, y in trainer.eval_batches[split].epoch()
            ]
            out[split] = _accuracy(model, scores, batches)
        else:
            out[split] = None
    if out["val"] is None and holdout:
        out["holdout"] = _accuracy(model, scores, holdout)
    return out


def _feature_policy(
    trainer: Any,
    layers: Sequence[PrunableLayer],
    feature: PrunableLayer | None,
    prune_features: bool,
    checkpoint: Path,
) -> int | None:
    """With ``--prune-features``: MC-Loss's class count (the feature layer keeps channels in
    equal parts of its groups), after checking that the feature layer can be pruned at all."""
    if not prune_features:
        return None
    if feature is None:
        raise PruneError(
            f"--prune-features: the feature layer of {checkpoint} cannot be pruned (its channels "
            "are tied to a residual sum or read by more than one layer); drop --prune-features"
        )
    for slot in trainer.slots:
        stateful = bool(slot.loss.state_dict()) and slot.name != "cc"
        if slot.name not in _PARAMETER_FREE_OK and stateful:
            raise PruneError(
                f"--prune-features: loss {slot.name!r} keeps per-channel or per-embedding state "
                "that pruning does not re-slice; expected losses ce, mc, cc (or no "
                "--prune-features)"
            )
    mc = [slot for slot in trainer.slots if slot.name == "mc"]
    if not mc:
        return None
    classes = int(trainer.data.num_classes)
    if feature.channels // classes < 2:
        raise PruneError(
            f"--prune-features: the feature layer {feature.name} has {feature.channels} channels "
            f"for {classes} MC-Loss classes, fewer than 2 per class group, so no class could "
            "lose one and keep one; drop --prune-features"
        )
    return classes


def _baseline_importance(
    method: str,
    model: nn.Module,
    layers: Sequence[PrunableLayer],
    calibration: Calibration,
    options: dict[str, Any],
) -> dict[str, Tensor]:
    if method == "taylor":
        return taylor_importance(model, layers, calibration)
    if method == "random":
        generator = torch.Generator().manual_seed(int(options["seed"]))
        return {x.name: random_importance(x, generator) for x in layers}
    score = l1_importance if method == "l1" else bn_scale_importance
    return {x.name: score(x) for x in layers}


def _loss_states(
    trainer: Any,
    saved: Sequence[dict[str, Tensor]],
    feature: PrunableLayer | None,
    kept: dict[str, list[int]],
) -> list[dict[str, Tensor]]:
    """The losses' state dicts for the pruned model: CC-Loss's attention re-sliced to the kept
    feature channels (and to the hidden width its formula gives for them)."""
    if feature is None or feature.name not in kept:
        return [dict(sd) for sd in saved]
    channels = torch.tensor(kept[feature.name])
    out = []
    for slot, sd in zip(trainer.slots, saved, strict=True):
        if slot.name != "cc" or not sd:  # the gate placement's loss has no state
            out.append(dict(sd))
            continue
        from chanloss.losses import create_loss

        fresh = create_loss(
            "cc",
            context={
                "num_channels": len(channels),
                "num_classes": trainer.data.num_classes,
                "embedding_dim": len(channels),
            },
            **trainer.config.losses[slot.index].params(),
        )
        hidden = fresh.fc1.weight.shape[0]
        fc1, fc2 = sd["fc1.weight"][:, channels], sd["fc2.weight"][channels]
        strength = fc1.abs().sum(1) * fc2.abs().sum(0)
        units = torch.argsort(-strength, stable=True)[:hidden].sort().values
        out.append(
            {
                "fc1.weight": fc1[units].clone(),
                "fc1.bias": sd["fc1.bias"][units].clone(),
                "fc2.weight": fc2[:, units].clone(),
                "fc2.bias": sd["fc2.bias"][channels].clone(),
            }
        )
    return out


@torch.no_grad()
def measure_latency(model: nn.Module, example: Tensor, repeats: int) -> dict[str, float]:
    """Median wall time (ms) of one forward pass on the CPU at batch 1 and 64 (eval mode)."""
    model = copy.deepcopy(model).cpu().eval()
    result = {}
    for batch in (1, 64):
        x = example.cpu().expand(batch, *example.shape[1:]).contiguous()
        for _ in range(2):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(1000 * (time.perf_counter() - start))
        result[f"batch{batch}"] = statistics.median(times)
    return result


def format_table(result: dict[str, Any]) -> str:
    """The terminal summary of a prune.json."""

    def pct(value: Any) -> str:
        return "-" if value is None else f"{100 * value:.2f}%"

    acc = result["accuracy"]
    rows = [("", "original", "pruned", "fine-tuned")]
    for split in ("val", "test"):
        rows.append(
            (
                f"{split} accuracy",
                pct(acc["original"].get(split)),
                pct(acc["pruned"].get(split)),
                pct((acc["finetuned"] or {}).get(split)),
            )
        )
    lat = result["latency_ms"]
    rows.append(("MACs", f"{result['macs']['before']:,}", f"{result['macs']['after']:,}", ""))
    rows.append(
        ("parameters", f"{result['params']['before']:,}", f"{result['params']['after']:,}", "")
    )
    for batch in ("batch1", "batch64"):
        rows.append(
            (
                f"latency {batch} (ms)",
                f"{lat['before'][batch]:.2f}",
                f"{lat['after'][batch]:.2f}",
                "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(
        f"{result['method']}: {result['speedup']:.2f}x fewer MACs (target {result['speedup_target']:g}x), "
        f"pruning took {result['time_s']['prune']:.1f} s"
        + (f", mix {result['cpli_mix']:g}" if result["cpli_mix"] is not None else "")
    )
    return "\n".join(lines)
