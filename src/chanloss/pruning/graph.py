"""Which channels can be removed, how many per layer for a MAC target, and the record.

Torch-Pruning's dependency graph (``torch_pruning.DependencyGraph``) says, for each
convolution, which other layers must lose the same channels. A convolution is *prunable* here
when its output channels reach exactly one layer that reads them (a ``Conv2d`` or ``Linear``)
through batch norm and element-wise operations only; channels tied to a residual sum (a
ResNet's stage outputs) or read by several layers are left alone. The prunable layer whose
reader is a ``Linear`` (or lies in the head) is the *feature layer* that CC-Loss and MC-Loss
read: it is pruned only with ``--prune-features``.

Every method prunes the same number of channels per layer: one keep ratio ``r`` shared by all
prunable layers (``max(1, round(r * channels))``; ``r`` per MC-Loss group for the feature
layer), the largest ``r`` that reaches the MAC target, found by bisection on the MACs that
Torch-Pruning counts on a pruned copy. Methods differ only in which channels they keep.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from chanloss.errors import PruneError as PruneError
from chanloss.models.pruned import RECORD_FORMAT, RECORD_VERSION, sync_feature_width


@dataclass
class PrunableLayer:
    """A convolution whose output channels can be removed, with the layers that follow it."""

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | nn.BatchNorm1d | None
    reader_name: str
    reader: nn.Module  # Conv2d or Linear whose input channels are this layer's outputs
    is_feature: bool
    bn_name: str | None = None

    @property
    def channels(self) -> int:
        return int(self.conv.out_channels)


def _logits(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


def dependency_graph(model: nn.Module, example: torch.Tensor) -> Any:
    """Torch-Pruning's dependency graph of ``model`` traced on ``example``."""
    import torch_pruning as tp

    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:  # the graph is traced through autograd
        p.requires_grad_(True)
    try:
        return tp.DependencyGraph().build_dependency(
            model, example, output_transform=_logits, verbose=False
        )
    finally:
        for p in frozen:
            p.requires_grad_(False)


def find_prunable(model: nn.Module, example: torch.Tensor) -> list[PrunableLayer]:
    """The prunable convolutions of ``model`` in forward order (see the module docstring)."""
    import torch_pruning as tp

    graph = dependency_graph(model, example)
    names = {module: name for name, module in model.named_modules()}
    order = _forward_order(model, example)
    found = []
    for conv in sorted(
        (m for m in model.modules() if isinstance(m, nn.Conv2d)), key=lambda m: order.get(m, 1e9)
    ):
        if conv not in graph.module2node or conv.groups != 1:
            continue
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, [0])
        bn, readers, other = None, [], False
        for dep, _ in group:
            module = dep.target.module
            if module is conv:
                continue
            if module not in names or _elementwise(module):  # ReLU, pooling, ...
                continue
            in_fn = graph.is_in_channel_pruning_fn(dep.handler)
            if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d) and bn is None:
                bn = module
            elif in_fn and isinstance(module, nn.Conv2d | nn.Linear):
                readers.append(module)
            else:
                other = True
        if other or len(readers) != 1:
            continue
        reader = readers[0]
        is_feature = isinstance(reader, nn.Linear) or not names[reader].startswith("body.")
        bn_name = names[bn] if bn is not None else None
        found.append(
            PrunableLayer(names[conv], conv, bn, names[reader], reader, is_feature, bn_name)
        )
    return found


def _elementwise(module: nn.Module) -> bool:
    conv_like = isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm2d | nn.BatchNorm1d)
    return not conv_like and next(module.parameters(), None) is None


def _forward_order(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, int]:
    order: dict[nn.Module, int] = {}

    def seen(module: nn.Module, inputs: Any, output: Any) -> None:
        order.setdefault(module, len(order))

    hooks = [m.register_forward_hook(seen) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return order


def mc_groups(channels: int, num_classes: int) -> list[range]:
    """MC-Loss's class groups: ``q, r = divmod(C, K)``, the first ``K - r`` of ``q`` channels."""
    q, r = divmod(channels, num_classes)
    sizes = [q] * (num_classes - r) + [q + 1] * r
    starts = [sum(sizes[:i]) for i in range(num_classes)]
    return [range(s, s + n) for s, n in zip(starts, sizes, strict=True)]


def keep_counts(
    layers: Sequence[PrunableLayer], ratio: float, groups: int | None
) -> dict[str, int]:
    """Channels each layer keeps at keep ratio ``ratio`` (the feature layer in ``groups``
    equal parts when MC-Loss reads it: ``groups * max(1, round(ratio * group size))``)."""
    counts = {}
    for layer in layers:
        if layer.is_feature and groups:
            per_group = max(1, round(ratio * (layer.channels // groups)))
            counts[layer.name] = groups * per_group
        else:
            counts[layer.name] = max(1, min(layer.channels, round(ratio * layer.channels)))
    return counts


def count_macs(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of one forward pass of ``model`` on ``example``, as Torch-Pruning's
    ``count_ops_and_params`` counts them (convolutions, linear layers, BN, ReLU, pooling)."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def prune_to(
    model: nn.Module,
    layers: Sequence[PrunableLayer],
    kept: dict[str, Sequence[int]],
    example: torch.Tensor,
) -> None:
    """Remove, in place, every channel of each layer not in ``kept[name]`` (with the BN and
    the reader's inputs that depend on it)."""
    import torch_pruning as tp

    graph = dependency_graph(model, example)
    modules = dict(model.named_modules())
    for layer in layers:
        conv = modules[layer.name]
        assert isinstance(conv, nn.Conv2d)
        removed = sorted(set(range(conv.out_channels)) - set(kept[layer.name]))
        if removed:
            graph.get_pruning_group(conv, tp.prune_conv_out_channels, removed).prune()
        if layer.is_feature:
            sync_feature_width(model, conv.out_channels)


def same_layers(model: nn.Module, layers: Sequence[PrunableLayer]) -> list[PrunableLayer]:
    """``layers`` re-pointed at the modules of ``model`` (a copy of the model they came from)."""
    modules = dict(model.named_modules())
    return [
        PrunableLayer(
            x.name,
            modules[x.name],
            modules[x.bn_name] if x.bn_name is not None else None,
            x.reader_name,
            modules[x.reader_name],
            x.is_feature,
            x.bn_name,
        )
        for x in layers
    ]


def macs_at(
    model: nn.Module,
    layers: Sequence[PrunableLayer],
    counts: dict[str, int],
    example: torch.Tensor,
) -> int:
    """MACs of a copy of ``model`` with ``counts[name]`` channels left in each layer."""
    trial = copy.deepcopy(model)
    prune_to(trial, layers, {n: range(c) for n, c in counts.items()}, example)
    return count_macs(trial, example)[0]


def plan_keep_counts(
    model: nn.Module,
    layers: Sequence[PrunableLayer],
    speedup: float,
    example: torch.Tensor,
    groups: int | None,
) -> tuple[dict[str, int], int, int]:
    """Per-layer channel counts for ``speedup`` (MACs before / after), the MACs before and the
    MACs planned; ``PruneError`` when even one channel per layer (group) cannot reach it."""
    base = count_macs(model, example)[0]
    target = base / speedup
    smallest = keep_counts(layers, 0.0, groups)
    floor = macs_at(model, layers, smallest, example)
    if floor > target:
        raise PruneError(
            f"--speedup {speedup:g} is unreachable: keeping one channel per prunable layer"
            f"{' (per MC-Loss class group)' if groups else ''} leaves {floor} of {base} MACs, "
            f"at most {base / floor:.2f}x; expected a smaller --speedup"
            + ("" if groups or any(x.is_feature for x in layers) else " or --prune-features")
        )
    low, high = 0.0, 1.0  # macs(low) <= target < macs(high)
    best = smallest
    for _ in range(14):
        mid = (low + high) / 2
        counts = keep_counts(layers, mid, groups)
        if macs_at(model, layers, counts, example) <= target:
            low, best = mid, counts
        else:
            high = mid
    return best, base, macs_at(model, layers, best, example)


def make_record(
    layers: Sequence[PrunableLayer],
    kept: dict[str, Sequence[int]],
    example: torch.Tensor,
    method: str,
) -> dict[str, Any]:
    """The plain-data record :func:`chanloss.models.pruned.apply_structure` re-applies."""
    feature = next((x.name for x in layers if x.is_feature), None)
    return {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "method": method,
        "input_shape": [1, *(int(v) for v in example.shape[1:])],
        "layers": [
            {"name": x.name, "total": x.channels, "kept": sorted(int(i) for i in kept[x.name])}
            for x in layers
        ],
        "feature_layer": feature,
    }
