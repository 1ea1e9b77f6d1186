"""The plan of a prune: every check, the calibration images and the keep counts, before
anything is written (:func:`check_request`, then :func:`plan_prune`).

A bad request, checkpoint or ``--set`` fails here in one line (:class:`PruneError`,
``CheckpointError`` or ``ConfigError``); so does a MAC target that no keep ratio reaches
(checked here for one keep ratio; a global ranking's counts follow from the scores the
method computes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from chanloss.pruning import inputs
from chanloss.pruning.criteria import BASELINES, Calibration
from chanloss.pruning.finetune import finetune_config
from chanloss.pruning.graph import PruneError, PruneGroup, find_groups, plan_counts
from chanloss.pruning.scoring import Scoring, calibration_images

__all__ = ["METHODS", "Counts", "PrunePlan", "Request", "check_request", "plan_prune"]

METHODS = ("cpli", *BASELINES)


@dataclass
class Request:
    """What the user asked for, checked; ``options`` are the ``prune.*`` settings and
    ``config_overrides`` the other ``--set`` items (for the fine-tune's config)."""

    checkpoint: Path
    method: str
    speedup: float
    finetune_epochs: int
    overrides: list[str]
    prune_features: bool
    refit: bool
    device: str
    options: dict[str, Any]
    config_overrides: list[tuple[str, Any]]

    def key(self) -> dict[str, Any]:
        """What identifies the prune in ``prune.partial.json`` (a resume must match it)."""
        return {
            "checkpoint": str(self.checkpoint.resolve()),
            "method": self.method,
            "speedup": self.speedup,
            "finetune_epochs": self.finetune_epochs,
            "overrides": self.overrides,
            "prune_features": self.prune_features,
            "refit": self.refit,
        }


def check_request(
    checkpoint: str | Path,
    *,
    method: str,
    speedup: float,
    finetune_epochs: int,
    overrides: Sequence[str],
    prune_features: bool,
    refit: bool | None,
    device: str,
) -> Request:
    """The request with its defaults filled in (``refit``: on for cpli only), or a
    :class:`PruneError`/``ConfigError`` naming what was expected."""
    from chanloss.config import parse_overrides

    if method not in METHODS:
        raise PruneError(f"unknown --method {method!r}; expected one of {', '.join(METHODS)}")
    if not isinstance(speedup, int | float) or not math.isfinite(speedup) or speedup <= 1:
        raise PruneError(f"--speedup must be a number > 1 (MACs before / after), got {speedup}")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int):
        raise PruneError(f"--finetune-epochs must be an integer >= 0, got {finetune_epochs!r}")
    if finetune_epochs < 0:
        raise PruneError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    options, config_overrides = inputs.split_overrides(parse_overrides(list(overrides)))
    return Request(
        checkpoint=Path(checkpoint),
        method=method,
        speedup=float(speedup),
        finetune_epochs=finetune_epochs,
        overrides=list(overrides),
        prune_features=bool(prune_features),
        refit=method == "cpli" if refit is None else bool(refit),
        device=device,
        options=options,
        config_overrides=config_overrides,
    )


class Counts:
    """Channels kept per group: one keep ratio for all groups (found once), or a global
    ranking of given scores; ``mc_classes``: MC-Loss's class count when the feature layer is
    pruned (it keeps equal parts of its class groups)."""

    def __init__(
        self,
        model: nn.Module,
        groups: list[PruneGroup],
        speedup: float,
        example: Tensor,
        options: dict[str, Any],
        mc_classes: int | None,
    ) -> None:
        self.args = (model, groups, speedup, example)
        self.round_to, self.mc_classes = int(options["round_to"]), mc_classes
        self.uniform: dict[str, int] | None = None

    def counts_for(self, scores: dict[str, Tensor] | None) -> dict[str, int]:
        """Channels per group root: for ``scores`` ranked globally, else the one keep ratio."""
        if scores is None and self.uniform is not None:
            return self.uniform
        counts = plan_counts(
            *self.args, round_to=self.round_to, mc_classes=self.mc_classes, scores=scores
        )[0]
        if scores is None:
            self.uniform = counts
        return counts


@dataclass
class PrunePlan:
    """Everything the prune reads, checked: the run (``state``, its ``config`` with the device
    asked for, the trained ``model`` and its loss ``slots``), the fine-tune's config, the
    scoring data, the calibration and validation images, the groups and the keep counts."""

    request: Request
    checkpoint: Path
    state: dict[str, Any]
    config: Any
    tune_config: Any
    model: nn.Module
    slots: list[Any]
    scoring: Scoring
    calibration: Calibration
    holdout: list[tuple[Tensor, Tensor]]
    holdout_name: str
    example: Tensor
    groups: list[PruneGroup]
    feature: PruneGroup | None
    counts: Counts


def plan_prune(request: Request) -> PrunePlan:
    """Read the run, load its data once, find its groups and count the channels to keep."""
    from chanloss.core.errors import CheckpointError
    from chanloss.run.loader import load_for_eval, read_checkpoint

    stored = read_checkpoint(request.checkpoint, device=request.device)
    checkpoint, state, config = stored.path, stored.state, stored.config
    if "model" not in state or "losses" not in state:
        raise CheckpointError(f"{checkpoint} is not a run's checkpoint (no model and loss weights)")
    if state.get("pruning") is not None:
        raise PruneError(
            f"{checkpoint} is already pruned; prune the run's original checkpoint instead"
        )
    options = request.options
    tune_config = finetune_config(
        config, request.finetune_epochs, options, request.config_overrides
    )
    # the data (loaded once), the model and losses (weights loaded, eval mode): no optimiser
    run = load_for_eval(stored)
    scoring = Scoring(run.evaluator)
    model = run.model
    calibration, holdout, holdout_name = calibration_images(scoring, options)
    example = calibration.batches[0][0][:1].detach().clone()
    groups = find_groups(model, example)
    feature = next((g for g in groups if g.is_feature), None)
    mc_classes = inputs.feature_policy(
        run.slots, scoring.data.num_classes, feature, request.prune_features, checkpoint
    )
    if not request.prune_features:
        groups = [g for g in groups if not g.is_feature]
    if not groups:
        raise PruneError(
            f"{config.model.name} has no prunable group of channels"
            + ("" if request.prune_features else "; --prune-features also prunes the feature map's")
        )
    counts = Counts(model, groups, request.speedup, example, options, mc_classes)
    if not options["global"]:
        counts.counts_for(None)  # an unreachable target fails here, before anything is written
    return PrunePlan(
        request=request,
        checkpoint=checkpoint,
        state=state,
        config=config,
        tune_config=tune_config,
        model=model,
        slots=run.slots,
        scoring=scoring,
        calibration=calibration,
        holdout=holdout,
        holdout_name=holdout_name,
        example=example,
        groups=groups,
        feature=feature,
        counts=counts,
    )
