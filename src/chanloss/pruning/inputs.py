"""The inputs of ``chanloss prune``: its ``prune.*`` options, the feature-map policy and the
losses' state for the pruned model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from chanloss.pruning.graph import PruneError, PruneGroup

#: ``--set prune.KEY=VALUE`` options and their defaults.
PRUNE_OPTIONS: dict[str, Any] = {
    "calibration_images": 128,  # training images the criteria and CPLI read
    "holdout_images": 512,  # training images that stand in for validation when there is none
    "mix": None,  # CPLI's mixing weight; None: chosen on validation from MIX_GRID
    "round_to": 8,  # every group keeps a multiple of this many channels (1: any number)
    "global": False,  # one ranking across groups instead of one keep ratio for all
    "finetune_lr": None,  # the fine-tune's lr; None: a tenth of the run's optim.lr
    "latency_repeats": 10,  # interleaved timing rounds per batch size
    "seed": 0,
}
_PARAMETER_FREE_OK = ("mc", "cc")  # channel losses --prune-features knows how to follow


def check_option(key: str, name: str, value: Any) -> Any:
    """``value`` of ``prune.name`` if valid, else a one-line :class:`PruneError`."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if name == "mix":
        if value is not None and (not number or not 0 <= value <= 1):
            raise PruneError(f"--set prune.mix must be a number in [0, 1] or null, got {value!r}")
    elif name == "global":
        if not isinstance(value, bool):
            raise PruneError(f"--set prune.global must be true or false, got {value!r}")
    elif name == "finetune_lr":
        if value is not None and (not number or not value > 0 or value != value):
            raise PruneError(f"--set prune.finetune_lr must be a number > 0 or null, got {value!r}")
    elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PruneError(f"--set {key} must be an integer >= 1, got {value!r}")
    return value


def printer(verbose: bool):
    """``say(line)``: print and flush when ``verbose``."""

    def say(line: str) -> None:
        if verbose:
            print(line, flush=True)

    return say


def split_overrides(items: list[tuple[str, Any]]) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """(the ``prune.*`` options with defaults, the other ``--set`` items for the config)."""
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
        options[name] = check_option(key, name, value)
    return options, rest


def feature_policy(
    slots: Sequence[Any],
    num_classes: int,
    feature: PruneGroup | None,
    prune_features: bool,
    checkpoint: Path,
) -> int | None:
    """With ``--prune-features``: MC-Loss's class count (the feature layer keeps channels in
    equal parts of its groups), after checking that the feature layer can be pruned at all."""
    if not prune_features:
        return None
    if feature is None:
        raise PruneError(
            f"--prune-features: the feature map of {checkpoint} has no prunable group (its "
            "channels are fixed by a layer that cannot lose channels); drop --prune-features"
        )
    for slot in slots:
        stateful = bool(slot.loss.state_dict()) and slot.name != "cc"
        if slot.name not in _PARAMETER_FREE_OK and stateful:
            raise PruneError(
                f"--prune-features: loss {slot.name!r} keeps per-channel or per-embedding state "
                "that pruning does not re-slice; expected losses ce, mc, cc (or no "
                "--prune-features)"
            )
    mc = [slot for slot in slots if slot.name == "mc"]
    if not mc:
        return None
    classes = int(num_classes)
    if feature.channels // classes < 2:
        raise PruneError(
            f"--prune-features: the feature layer {feature.root} has {feature.channels} channels "
            f"for {classes} MC-Loss classes, fewer than 2 per class group, so no class could "
            "lose one and keep one; drop --prune-features"
        )
    return classes


def loss_states(
    slots: Sequence[Any],
    num_classes: int,
    config: Any,
    saved: Sequence[dict[str, Tensor]],
    feature: PruneGroup | None,
    kept: dict[str, list[int]],
) -> list[dict[str, Tensor]]:
    """The losses' state dicts for the pruned model: CC-Loss's attention re-sliced to the kept
    feature channels (and to the hidden width its formula gives for them)."""
    if feature is None or feature.root not in kept:
        return [dict(sd) for sd in saved]
    channels = torch.tensor(kept[feature.root])
    out = []
    for slot, sd in zip(slots, saved, strict=True):
        if slot.name != "cc" or not sd:  # the gate placement's loss has no state
            out.append(dict(sd))
            continue
        from chanloss.losses import create_loss

        fresh = create_loss(
            "cc",
            context={
                "num_channels": len(channels),
                "num_classes": num_classes,
                "embedding_dim": len(channels),
            },
            **config.losses[slot.index].params(),
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
