"""Re-apply a recorded channel pruning to a freshly built model (what loaders of a pruned
checkpoint call), and the dependency graph both pruning and loading use.

``chanloss prune`` never pickles a pruned module: its checkpoint stays a weights-only file
whose ``"pruning"`` entry records, for each pruned *group* of coupled channels, the
convolution that roots it (its output channels are the group's channels), how many channels
it had and which ones were kept. Loading rebuilds the base model from the stored config, hands
it to :func:`apply_structure` (which removes the same channels of every group with
Torch-Pruning's dependency graph, so that batch norms, residual sums, the option-A shortcuts'
channel maps and the readers' inputs follow), then loads the weights.

The record (plain data)::

    {"format": "chanloss-pruning", "version": 2, "input_shape": [1, C, H, W],
     "layers": [{"name": "body.0", "total": 16, "kept": [0, 3, ...]}, ...],
     "feature_layer": "body.3.2.conv2" or None}

Version 1 records (written before groups spanned residual streams) name only group roots
whose groups are unchanged, so they replay the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

RECORD_FORMAT = "chanloss-pruning"
RECORD_VERSION = 2
READABLE_VERSIONS = (1, 2)


def check_record(record: Any) -> dict[str, Any]:
    """``record`` if it is a well-formed pruning record; otherwise ``ValueError`` naming why."""
    if not isinstance(record, Mapping) or record.get("format") != RECORD_FORMAT:
        raise ValueError(f"the pruning record is not a {RECORD_FORMAT!r} entry")
    if record.get("version") not in READABLE_VERSIONS:
        raise ValueError(
            f"pruning record version {record.get('version')!r}, expected one of "
            f"{', '.join(map(str, READABLE_VERSIONS))} (prune the original run again with this "
            "version of chanloss)"
        )
    shape = record.get("input_shape")
    if not isinstance(shape, list | tuple) or len(shape) != 4:
        raise ValueError(f"pruning record: input_shape must be [1, C, H, W], got {shape!r}")
    layers = record.get("layers")
    if not isinstance(layers, list):
        raise ValueError("pruning record: layers must be a list")
    for entry in layers:
        if not isinstance(entry, Mapping) or not {"name", "total", "kept"} <= set(entry):
            raise ValueError(f"pruning record: malformed layer entry {entry!r}")
        kept, total = list(entry["kept"]), int(entry["total"])
        if not kept or sorted(set(kept)) != kept or kept[0] < 0 or kept[-1] >= total:
            raise ValueError(
                f"pruning record: layer {entry['name']!r} keeps {kept!r}, expected sorted "
                f"distinct channel indices in [0, {total})"
            )
    return dict(record)


class _ChannelMapPruner:
    """Torch-Pruning pruner for a parameter-free module that maps input channels onto output
    channels through an index (the option-A shortcut): its input and output channels belong to
    different groups, and pruning either updates the map (``keep_outputs``/``remove_inputs``)."""

    def __new__(cls) -> Any:
        import torch_pruning as tp

        class Pruner(tp.pruner.BasePruningFunc):
            TARGET_MODULES = None

            def prune_out_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
                layer.keep_outputs(sorted(int(i) for i in idxs))
                return layer

            def prune_in_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
                layer.remove_inputs(sorted(int(i) for i in idxs))
                return layer

            def get_out_channels(self, layer: nn.Module) -> int:
                return int(layer.out_channels)

            def get_in_channels(self, layer: nn.Module) -> int:
                return int(layer.in_channels)

        return Pruner()


def channel_map_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that :class:`_ChannelMapPruner` handles."""
    return [
        m for m in model.modules() if hasattr(m, "keep_outputs") and hasattr(m, "remove_inputs")
    ]


def build_graph(model: nn.Module, example: torch.Tensor) -> Any:
    """Torch-Pruning's dependency graph of ``model`` traced on ``example`` (channel-map
    modules get their own pruner; frozen parameters are traced too)."""
    import torch_pruning as tp

    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:  # the graph is traced through autograd
        p.requires_grad_(True)
    pruner = _ChannelMapPruner()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model,
                example,
                output_transform=_logits,
                customized_pruners={type(m): pruner for m in channel_map_modules(model)},
                verbose=False,
            )
    finally:
        for p in frozen:
            p.requires_grad_(False)


def prune_group(graph: Any, conv: nn.Conv2d, removed: list[int]) -> None:
    """Remove the output channels ``removed`` of ``conv`` and every coupled channel."""
    import torch_pruning as tp

    if removed:
        graph.get_pruning_group(conv, tp.prune_conv_out_channels, removed).prune()


def apply_structure(model: nn.Module, record: Mapping[str, Any]) -> nn.Module:
    """Remove from ``model`` (as built from the stored config) the channels that ``record``
    says were removed; returns the same module, pruned in place.

    A layer the record names that the model lacks, or of another width, is a ``ValueError``.
    """
    record = check_record(record)
    modules = dict(model.named_modules())
    example = torch.zeros(*[int(v) for v in record["input_shape"]])
    was_training = model.training
    model.eval()
    graph = build_graph(model, example)
    for entry in record["layers"]:
        conv = modules.get(entry["name"])
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"pruning record names layer {entry['name']!r}, not a convolution")
        if conv.out_channels != int(entry["total"]):
            raise ValueError(
                f"pruning record: layer {entry['name']!r} had {entry['total']} channels, the "
                f"model built from the config has {conv.out_channels}"
            )
        prune_group(graph, conv, sorted(set(range(conv.out_channels)) - set(entry["kept"])))
    feature = record.get("feature_layer")
    if feature is not None:
        sync_feature_width(model, int(modules[feature].out_channels))
    model.train(was_training)
    return model


def sync_feature_width(model: nn.Module, channels: int) -> None:
    """Set the width attributes of a backbone whose feature layer now has ``channels``."""
    if hasattr(model, "num_features"):
        model.num_features = channels
    head = getattr(model, "head", None)
    classifier = getattr(model, "classifier", None)
    if head is not None and hasattr(head, "out_features") and isinstance(classifier, nn.Linear):
        if type(head).__name__ == "GapHead":
            head.out_features = channels
        model.embedding_dim = classifier.in_features


def _logits(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


__all__ = [
    "RECORD_FORMAT",
    "RECORD_VERSION",
    "apply_structure",
    "build_graph",
    "check_record",
    "prune_group",
]
