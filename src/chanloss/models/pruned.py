"""Re-apply a recorded channel selection to a freshly built model (what loaders of a pruned
checkpoint call).

``chanloss prune`` never pickles a pruned module: its checkpoint stays a weights-only file
whose ``"pruning"`` entry records, for each pruned convolution, how many output channels it had
and which ones were kept. Loading rebuilds the base model from the stored config, hands it to
:func:`apply_structure` (which removes the same channels with Torch-Pruning's dependency graph,
so that the BN layers and the next layer's inputs follow), then loads the weights.

The record (plain data)::

    {"format": "chanloss-pruning", "version": 1, "input_shape": [1, C, H, W],
     "layers": [{"name": "body.0", "total": 32, "kept": [0, 3, ...]}, ...],
     "feature_layer": "body.11" or None}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

RECORD_FORMAT = "chanloss-pruning"
RECORD_VERSION = 1


def check_record(record: Any) -> dict[str, Any]:
    """``record`` if it is a well-formed pruning record; otherwise ``ValueError`` naming why."""
    if not isinstance(record, Mapping) or record.get("format") != RECORD_FORMAT:
        raise ValueError(f"the pruning record is not a {RECORD_FORMAT!r} entry")
    if record.get("version") != RECORD_VERSION:
        raise ValueError(
            f"pruning record version {record.get('version')!r}, expected {RECORD_VERSION}"
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


def apply_structure(model: nn.Module, record: Mapping[str, Any]) -> nn.Module:
    """Remove from ``model`` (as built from the stored config) the channels that ``record``
    says were removed; returns the same module, pruned in place.

    A layer the record names that the model lacks, or of another width, is a ``ValueError``.
    """
    import torch_pruning as tp

    record = check_record(record)
    modules = dict(model.named_modules())
    example = torch.zeros(*[int(v) for v in record["input_shape"]])
    was_training = model.training
    model.eval()
    graph = tp.DependencyGraph().build_dependency(
        model, example, output_transform=_logits, verbose=False
    )
    for entry in record["layers"]:
        conv = modules.get(entry["name"])
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(f"pruning record names layer {entry['name']!r}, not a convolution")
        if conv.out_channels != int(entry["total"]):
            raise ValueError(
                f"pruning record: layer {entry['name']!r} had {entry['total']} channels, the "
                f"model built from the config has {conv.out_channels}"
            )
        removed = sorted(set(range(conv.out_channels)) - set(entry["kept"]))
        if removed:
            graph.get_pruning_group(conv, tp.prune_conv_out_channels, removed).prune()
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


__all__ = ["RECORD_FORMAT", "RECORD_VERSION", "apply_structure", "check_record"]
