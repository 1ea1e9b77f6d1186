"""Which channels can be removed together (groups), how many per group for a MAC target, and
the record a pruned checkpoint carries.

A *group* is what Torch-Pruning's dependency graph (``torch_pruning.DependencyGraph``, with our
pruner for the option-A shortcut's channel map) says must lose the same channels when one
convolution loses an output channel: a block-internal convolution with its BN and its
reader's inputs, or a whole residual stream (a stage's stem or first block output, every
block output added to it, the projection shortcut, every layer reading the stream). Each
group is named by its *root*, the first of its convolutions Torch-Pruning meets; its channels
are the root's output channels.

Every convolution (``groups=1``) roots a group, except groups that also change the model's
logits or run after the feature map (inside the head). The group whose channels the head,
the classifier or a channel gate reads (the ``features`` map that CC-Loss and MC-Loss read)
is the *feature group*: pruned only with ``--prune-features``.

Budgets (:func:`plan_counts`): by default every group keeps the same fraction ``r`` of its
channels, the largest ``r`` whose pruned model meets the MAC target (bisection on the MACs
Torch-Pruning counts on a pruned copy); with ``global_ranking`` one threshold on the
criterion's scores (each group's scores divided by their mean) across all groups, each group
keeping at least a tenth of its channels. Counts are multiples of ``round_to`` (widths that
are multiples of 8 run faster); a group narrower than ``round_to`` is left whole.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from chanloss.core.errors import PruneError as PruneError
from chanloss.models.pruned import (
    RECORD_FORMAT,
    RECORD_VERSION,
    build_graph,
    prune_group,
    sync_feature_width,
)

GLOBAL_FLOOR = 0.1  # the least fraction of its channels a group keeps under global ranking


@dataclass
class Member:
    """A layer of a group: its channel positions ``positions`` (input positions of a reader,
    output positions of a writer or a norm) and ``channel_of[i]``, the group channel at
    ``positions[i]`` (several positions per channel after a flatten)."""

    name: str
    positions: list[int]
    channel_of: list[int]


@dataclass
class PruneGroup:
    """Coupled channels that are removed together (see the module docstring)."""

    root: str
    channels: int
    writers: list[Member]  # Conv2d/Linear whose output channels are the group's
    norms: list[Member]  # BatchNorm layers on the channels
    readers: list[Member]  # Conv2d/Linear whose input channels are the group's
    members: int
    is_feature: bool = False
    order: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _logits(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


def forward_order(model: nn.Module, example: Tensor) -> dict[str, int]:
    """The position of each leaf module's (last) call in one forward pass of ``model``."""
    order: dict[str, int] = {}
    names = {m: n for n, m in model.named_modules()}

    def seen(module: nn.Module, inputs: Any, output: Any) -> None:
        order[names[module]] = len(order)

    hooks = [m.register_forward_hook(seen) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return order


def _feature_module(model: nn.Module) -> str | None:
    """The sub-module whose output is ``features``: a backbone's ``body``, a FeatureTap's layer."""
    if isinstance(getattr(model, "body", None), nn.Module):
        return "body"
    layer, inner = getattr(model, "layer", None), getattr(model, "model", None)
    if isinstance(layer, str) and isinstance(inner, nn.Module):
        return f"model.{layer}"
    return None


def find_groups(model: nn.Module, example: Tensor) -> list[PruneGroup]:
    """The prunable groups of ``model`` in forward order of their first writer."""
    import torch_pruning as tp

    graph = build_graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    order = forward_order(model, example)
    logit_writers = _logit_writers(model, example)
    feature_module = _feature_module(model)
    inside = [n for n in order if feature_module and (n + ".").startswith(feature_module + ".")]
    feature_end = max((order[n] for n in inside), default=None)
    groups, visited = [], set()
    for conv in model.modules():
        if not isinstance(conv, nn.Conv2d) or conv in visited or conv not in graph.module2node:
            continue
        full = list(range(conv.out_channels))
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, full)
        writers, norms, readers, skip = [], [], [], conv.groups != 1
        for item in group:
            dep, idxs, roots = item.dep, list(item.idxs), list(item.root_idxs)
            module = dep.target.module
            name = names.get(module)
            is_out = graph.is_out_channel_pruning_fn(dep.handler)
            if is_out:
                visited.add(module)
            if name is None:
                continue
            if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                norms.append(Member(name, idxs, roots))
            elif isinstance(module, nn.Conv2d | nn.Linear) and is_out:
                writers.append(Member(name, idxs, roots))
                skip |= module in logit_writers or getattr(module, "groups", 1) != 1
            elif isinstance(module, nn.Conv2d | nn.Linear):
                readers.append(Member(name, idxs, roots))
                skip |= getattr(module, "groups", 1) != 1
        first = min(order.get(w.name, 10**9) for w in writers)
        if skip or (feature_end is not None and first > feature_end):
            continue
        late_readers = [r for r in readers if order.get(r.name, 0) > (feature_end or 10**9)]
        is_feature = (
            bool(late_readers)
            if feature_end is not None
            else any(isinstance(model.get_submodule(r.name), nn.Linear) for r in readers)
        )
        groups.append(
            PruneGroup(
                names[conv],
                conv.out_channels,
                writers,
                norms,
                readers,
                len(group),
                is_feature,
                first,
            )
        )
    return sorted(groups, key=lambda g: g.order)


def _logit_writers(model: nn.Module, example: Tensor) -> set[nn.Module]:
    """The layers whose output is the model's logits."""
    found, outputs = set(), {}

    def seen(module: nn.Module, inputs: Any, output: Any) -> None:
        outputs[module] = output

    hooks = [m.register_forward_hook(seen) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            logits = _logits(model(example))
    finally:
        for h in hooks:
            h.remove()
    for module, output in outputs.items():
        if isinstance(output, Tensor) and output.data_ptr() == logits.data_ptr():
            found.add(module)
    return found


def mc_groups(channels: int, num_classes: int) -> list[range]:
    """MC-Loss's class groups: ``q, r = divmod(C, K)``, the first ``K - r`` of ``q`` channels."""
    q, r = divmod(channels, num_classes)
    sizes = [q] * (num_classes - r) + [q + 1] * r
    starts = [sum(sizes[:i]) for i in range(num_classes)]
    return [range(s, s + n) for s, n in zip(starts, sizes, strict=True)]


def rounded(count: float, channels: int, round_to: int) -> int:
    """``count`` channels as a multiple of ``round_to`` in ``[round_to, channels]`` (nearest;
    at least 1); a group narrower than ``round_to`` keeps all its channels."""
    if channels < round_to:
        return channels
    return int(min(channels, max(round_to, round_to * round(count / round_to), 1)))


def keep_counts(
    groups: Sequence[PruneGroup], ratio: float, round_to: int, mc_classes: int | None
) -> dict[str, int]:
    """Channels each group keeps at keep ratio ``ratio`` (the feature group in ``mc_classes``
    equal parts when MC-Loss reads it)."""
    counts = {}
    for group in groups:
        if group.is_feature and mc_classes:
            counts[group.root] = mc_classes * max(1, round(ratio * (group.channels // mc_classes)))
        else:
            counts[group.root] = rounded(ratio * group.channels, group.channels, round_to)
    return counts


def count_macs(model: nn.Module, example: Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass of ``model`` on ``example``, as Torch-Pruning's
    ``count_ops_and_params`` counts them (convolutions, linear layers, BN, ReLU, pooling)."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def prune_groups(
    model: nn.Module, kept: dict[str, Sequence[int]], example: Tensor, feature: str | None
) -> None:
    """Remove, in place, every channel of each group (by root) not in ``kept[root]``."""
    graph = build_graph(model, example)
    modules = dict(model.named_modules())
    for root, keep in kept.items():
        conv = modules[root]
        prune_group(graph, conv, sorted(set(range(conv.out_channels)) - set(keep)))
    if feature is not None and feature in kept:
        sync_feature_width(model, len(kept[feature]))


def macs_at(model: nn.Module, counts: dict[str, int], example: Tensor, feature: str | None) -> int:
    """MACs of a copy of ``model`` with ``counts[root]`` channels left in each group."""
    trial = copy.deepcopy(model)
    prune_groups(trial, {n: range(c) for n, c in counts.items()}, example, feature)
    return count_macs(trial, example)[0]


def _feature_root(groups: Sequence[PruneGroup]) -> str | None:
    return next((g.root for g in groups if g.is_feature), None)


def plan_counts(
    model: nn.Module,
    groups: Sequence[PruneGroup],
    speedup: float,
    example: Tensor,
    *,
    round_to: int,
    mc_classes: int | None,
    scores: dict[str, Tensor] | None = None,
) -> tuple[dict[str, int], int, int]:
    """Channels per group for ``speedup`` (MACs before / after), the MACs before and the MACs
    planned; ``scores`` (per group) switch to one global ranking. ``PruneError`` when the
    smallest allowed widths cannot reach the target."""
    base = count_macs(model, example)[0]
    target = base / speedup
    feature = _feature_root(groups)
    if scores is None:
        counts_at: Callable[[float], dict[str, int]] = lambda r: keep_counts(  # noqa: E731
            groups, r, round_to, mc_classes
        )
    else:
        counts_at = _global_counts(groups, scores, round_to, mc_classes)
    cache: dict[tuple[tuple[str, int], ...], int] = {}

    def macs(counts: dict[str, int]) -> int:
        key = tuple(sorted(counts.items()))
        if key not in cache:
            cache[key] = macs_at(model, counts, example, feature)
        return cache[key]

    smallest = counts_at(0.0)
    floor = macs(smallest)
    if floor > target:
        narrow = sum(g.channels < round_to for g in groups)
        raise PruneError(
            f"--speedup {speedup:g} is unreachable: the narrowest allowed widths (multiples of "
            f"prune.round_to={round_to}{', a tenth of each group' if scores is not None else ''}"
            f"{'; ' + str(narrow) + ' groups narrower than round_to stay whole' if narrow else ''}"
            f") leave {floor} of {base} MACs, at most {base / floor:.2f}x; expected a smaller "
            "--speedup"
            + (", a smaller prune.round_to" if round_to > 1 else "")
            + ("" if feature is not None else " or --prune-features")
        )
    low, high, best = 0.0, 1.0, smallest  # macs(low) <= target < macs(high)
    for _ in range(12):
        mid = (low + high) / 2
        counts = counts_at(mid)
        if macs(counts) <= target:
            low, best = mid, counts
        else:
            high = mid
    return best, base, macs(best)


def _global_counts(
    groups: Sequence[PruneGroup], scores: dict[str, Tensor], round_to: int, mc: int | None
) -> Callable[[float], dict[str, int]]:
    """``q -> counts``: keep the channels whose normalised score is above the ``1 - q``
    quantile of all groups' normalised scores (at least a tenth of each group)."""
    normalised = {
        g.root: scores[g.root].double() / scores[g.root].double().mean().clamp_min(1e-12)
        for g in groups
    }
    pooled = torch.sort(torch.cat(list(normalised.values()))).values

    def counts(q: float) -> dict[str, int]:
        position = min(len(pooled) - 1, int((1 - q) * len(pooled)))
        threshold = float(pooled[position]) if q < 1 else -math.inf
        out = {}
        for g in groups:
            above = int((normalised[g.root] >= threshold).sum())
            wanted = max(above, math.ceil(GLOBAL_FLOOR * g.channels))
            if g.is_feature and mc:
                out[g.root] = mc * max(1, round(wanted / mc))
            else:
                out[g.root] = rounded(max(wanted, 1), g.channels, round_to)
        return out

    return counts


def make_record(
    groups: Sequence[PruneGroup],
    kept: dict[str, Sequence[int]],
    example: Tensor,
    method: str,
) -> dict[str, Any]:
    """The plain-data record :func:`chanloss.models.pruned.apply_structure` re-applies."""
    feature = next((g.root for g in groups if g.is_feature and g.root in kept), None)
    return {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "method": method,
        "input_shape": [1, *(int(v) for v in example.shape[1:])],
        "layers": [
            {"name": g.root, "total": g.channels, "kept": sorted(int(i) for i in kept[g.root])}
            for g in groups
            if g.root in kept
        ],
        "feature_layer": feature,
    }
