"""The prune itself: a copy of the planned model loses the channels the method chooses
(CPLI over its mixing grid, chosen on validation, or a baseline criterion scored once)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from chanloss.pruning.cpli import MIX_GRID, all_scores, cpli_chooser, writers_of_pruned
from chanloss.pruning.criteria import baseline_importance, top_channels
from chanloss.pruning.graph import PruneGroup, mc_groups, prune_groups
from chanloss.pruning.plan import Counts, PrunePlan
from chanloss.pruning.scoring import accuracy
from chanloss.pruning.sequential import prune_in_order

__all__ = ["Pruned", "prune_model"]


@dataclass
class Pruned:
    """The pruned copy of the model, the kept channels per group root, CPLI's mixing weight
    and the validation accuracy of each mix tried (``None`` and empty for the baselines)."""

    model: nn.Module
    kept: dict[str, list[int]]
    mix: float | None = None
    mix_scores: dict[str, Any] = field(default_factory=dict)


def prune_model(plan: PrunePlan, say: Any) -> Pruned:
    """Prune a copy of ``plan.model`` by the requested method (the original is untouched)."""
    request = plan.request
    feature = next((g.root for g in plan.groups if g.is_feature), None)
    targets: dict[str, list[Tensor]] = {}  # the original readers' outputs, shared by trials
    common = dict(targets=targets, original=plan.model, feature=feature, refit=request.refit)
    if request.method != "cpli":
        return _baseline_prune(plan, say, common)
    options = plan.request.options
    grid = MIX_GRID if options["mix"] is None else (float(options["mix"]),)
    best = None
    mix_scores: dict[str, Any] = {}
    for mix in grid:
        counts = plan.counts.counts_for(
            all_scores(plan.model, plan.groups, plan.calibration, mix)
            if options["global"]
            else None
        )
        trial = copy.deepcopy(plan.model)
        chooser = cpli_chooser(
            mix, counts, plan.counts.mc_classes, writers_of_pruned(plan.groups, counts)
        )
        kept = prune_in_order(
            trial,
            plan.groups,
            plan.calibration,
            plan.example,
            choose=chooser,
            needs_capture=True,
            needs_grad=True,
            progress=say if len(grid) == 1 or mix == grid[0] else None,
            **common,
        )
        acc = accuracy(trial, plan.scoring.scores, plan.holdout) if len(grid) > 1 else None
        mix_scores[str(mix)] = acc
        if len(grid) > 1:
            say(f"cpli mix {mix:g}: {plan.holdout_name} accuracy {100 * acc:.2f}%")
        if best is None or (acc is not None and acc > best[0]):
            best = (acc if acc is not None else 0.0, mix, trial, kept)
    _, mix, pruned, kept = best
    return Pruned(pruned, kept, mix, mix_scores)


def _baseline_prune(plan: PrunePlan, say: Any, common: dict) -> Pruned:
    """Prune a copy of the model by a baseline criterion (scored once on the original)."""
    options = plan.request.options
    importance = baseline_importance(
        plan.request.method, plan.model, plan.groups, plan.calibration, int(options["seed"])
    )
    counts = plan.counts.counts_for(importance if options["global"] else None)

    def choose(group: PruneGroup, seen: Any) -> list[int]:
        return top_channels(importance[group.root], counts[group.root], _parts(group, plan.counts))

    pruned = copy.deepcopy(plan.model)
    groups = plan.groups
    if common["refit"]:
        kept = prune_in_order(
            pruned,
            groups,
            plan.calibration,
            plan.example,
            choose=choose,
            needs_capture=False,
            needs_grad=False,
            progress=say,
            **common,
        )
    else:
        kept = {g.root: choose(g, None) for g in groups}
        prune_groups(pruned, kept, plan.example, common["feature"])
        for i, g in enumerate(groups):
            say(
                f"group {i + 1}/{len(groups)} {g.root} ({g.members} layers): kept "
                f"{len(kept[g.root])}/{g.channels}"
            )
    return Pruned(pruned, kept)


def _parts(group: PruneGroup, counts: Counts) -> list[range] | None:
    if group.is_feature and counts.mc_classes:
        return mc_groups(group.channels, counts.mc_classes)
    return None
