"""CPLI as we reconstruct it: channel pruning guided by classification loss and feature
importance (Guo, Ouyang, Xu, AAAI 2020).

The paper's abstract: layer by layer, choose channels not only by how well the next layer's
features can be reconstructed but also by the classification loss, and suppress in the
reconstruction the features that the next pruning stage removes. Its full text and code were
not available; what follows is our reading (docs/pruning.md says which parts are ours).

For the prunable layers in forward order, on calibration images of the training split, with
``a`` the reader's input (the layer's channels after BN, ReLU, pooling) and ``Y`` the
reader's output:

- loss term ``s_c = mean_images |sum_positions (dL/da_c) a_c|``: the first-order change of
  the cross-entropy when channel ``c`` is zeroed;
- reconstruction term ``e_c = sum_j w_j mean_images ||W[j, c] * a_c||^2``: the energy that
  channel ``c`` contributes to the reader's output channel ``j`` (``*`` the convolution),
  weighted by ``w_j``, the loss term of the reader's own output channels (normalised to mean
  1) when the reader is itself pruned next, else 1: features due to be removed count little;
- importance ``(1 - mix) s_c / sum(s) + mix e_c / sum(e)``; the layer keeps its top channels;
- the reader is re-fitted by least squares on the kept channels to reproduce the *original*
  model's reader output from the pruned model's input (per output channel, so the weights
  ``w_j`` do not change the solution; a small ridge keeps it well posed).

``mix`` is chosen from a grid by the accuracy of the pruned (not fine-tuned) model on the
validation images.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chanloss.pruning.criteria import Calibration, top_channels
from chanloss.pruning.graph import PrunableLayer, dependency_graph, mc_groups

MIX_GRID = (0.0, 0.5, 1.0)
_ELEMENT_BUDGET = 2**24  # floats per chunk of the per-channel contribution convolution


class _Capture:
    """Forward pre-hook keeping a module's input (with its gradient) for each batch."""

    def __init__(self, module: nn.Module, grad: bool) -> None:
        self.inputs: list[Tensor] = []
        self.grad = grad
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0]
        if not self.grad:
            self.inputs.append(x)
            return None
        if not x.requires_grad:  # the first capture: the graph starts here
            x = x.detach().requires_grad_(True)
        else:
            x.retain_grad()
        self.inputs.append(x)
        return (x, *args[1:])

    def remove(self) -> None:
        self.handle.remove()


def loss_term(inputs: Sequence[Tensor]) -> Tensor:
    """``s_c = mean_images |sum_positions g * a|`` from captured reader inputs (with grads)."""
    total, count = None, 0
    for a in inputs:
        g = a.grad if a.grad is not None else torch.zeros_like(a)
        per_image = (g * a).detach().flatten(2).sum(2) if a.dim() > 2 else (g * a).detach()
        part = per_image.abs().sum(0)
        total = part if total is None else total + part
        count += a.shape[0]
    return total / max(count, 1)


def reconstruction_term(reader: nn.Module, inputs: Sequence[Tensor], weights: Tensor) -> Tensor:
    """``e_c = sum_j w_j mean_images ||W[j, c] * a_c||^2`` for a Conv2d or Linear reader."""
    weight = reader.weight.detach()
    channels = weight.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for a in inputs:
        a = a.detach()
        count += a.shape[0]
        if isinstance(reader, nn.Linear):
            energy = weight.square().t().double() * a.square().sum(0).double()[:, None]  # (C, O)
            total += energy @ weights.double()
            continue
        outs = weight.shape[0]
        split = weight.transpose(0, 1).reshape(channels * outs, 1, *weight.shape[2:])
        spatial = a.shape[2] * a.shape[3]
        step = max(1, _ELEMENT_BUDGET // max(1, channels * outs * spatial))
        for start in range(0, a.shape[0], step):
            part = F.conv2d(
                a[start : start + step],
                split,
                None,
                reader.stride,
                reader.padding,
                reader.dilation,
                groups=channels,
            )
            energy = part.view(part.shape[0], channels, outs, -1).square().sum((0, 3)).double()
            total += energy @ weights.double()
    return (total / max(count, 1)).float()


def refit_reader(
    reader: nn.Module, inputs: Sequence[Tensor], targets: Sequence[Tensor], ridge: float = 1e-4
) -> None:
    """Least-squares weights of ``reader`` (already pruned to the kept input channels) that
    map ``inputs`` to the original ``targets`` (the reader's outputs before pruning)."""
    weight = reader.weight
    gram, cross = None, None
    for a, y in zip(inputs, targets, strict=True):
        a, y = a.detach().double(), y.detach().double()
        if reader.bias is not None:
            y = y - reader.bias.detach().double().view(1, -1, *([1] * (y.dim() - 2)))
        if isinstance(reader, nn.Linear):
            x, t = a, y
        else:
            cols = F.unfold(
                a, weight.shape[2:], reader.dilation, reader.padding, reader.stride
            )  # (B, C k k, L)
            x = cols.transpose(1, 2).reshape(-1, cols.shape[1])
            t = y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])
        g, c = x.t() @ x, x.t() @ t
        gram = g if gram is None else gram + g
        cross = c if cross is None else cross + c
    scale = ridge * float(torch.diagonal(gram).mean().clamp_min(1e-12))
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    solution = torch.linalg.solve(gram + scale * eye, cross)  # (C k k, O)
    with torch.no_grad():
        weight.copy_(solution.t().reshape(weight.shape).to(weight.dtype))


def cpli_prune(
    model: nn.Module,
    layers: Sequence[PrunableLayer],
    counts: dict[str, int],
    calibration: Calibration,
    example: Tensor,
    *,
    mix: float,
    mc_classes: int | None,
    targets: dict[str, list[Tensor]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[int]]:
    """Prune ``model`` in place layer by layer (see the module docstring); the kept channels.

    ``layers`` are found on ``model``; ``counts`` says how many channels each keeps;
    ``mc_classes`` makes the feature layer keep the same number in each MC-Loss class group;
    ``targets`` caches the original model's reader outputs (by reader name) across calls.
    """

    original = copy.deepcopy(model).eval()
    original_modules = dict(original.named_modules())
    kept_all: dict[str, list[int]] = {}
    model.eval()
    # Only the gradient at the readers' inputs is needed: no parameter gradients, and the
    # backward pass stops at the first captured input.
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        _layer_by_layer(
            model,
            original,
            original_modules,
            layers,
            counts,
            calibration,
            example,
            mix,
            mc_classes,
            targets,
            progress,
            kept_all,
        )
    finally:
        for p in trainable:
            p.requires_grad_(True)
    return kept_all


def _layer_by_layer(
    model: nn.Module,
    original: nn.Module,
    original_modules: dict[str, nn.Module],
    layers: Sequence[PrunableLayer],
    counts: dict[str, int],
    calibration: Calibration,
    example: Tensor,
    mix: float,
    mc_classes: int | None,
    targets: dict[str, list[Tensor]] | None,
    progress: Callable[[str], None] | None,
    kept_all: dict[str, list[int]],
) -> None:
    import torch_pruning as tp

    for index, layer in enumerate(layers):
        modules = dict(model.named_modules())
        reader = modules[layer.reader_name]
        following = _next_pruned(layers, index, layer.reader_name)
        capture = _Capture(reader, grad=True)
        capture_next = (
            _Capture(modules[following.reader_name], grad=True) if following is not None else None
        )
        try:
            for x, y in calibration:
                calibration.loss(model, x, y).backward()
        finally:
            capture.remove()
            if capture_next is not None:
                capture_next.remove()
        s = loss_term(capture.inputs)
        if capture_next is not None:
            w = loss_term(capture_next.inputs)
            w = w / w.mean().clamp_min(1e-12)
        else:
            w = torch.ones(reader.weight.shape[0])
        importance = (1 - mix) * s / s.sum().clamp_min(1e-12)
        if mix > 0:
            e = reconstruction_term(reader, capture.inputs, w)
            importance = importance + mix * e / e.sum().clamp_min(1e-12)
        groups = mc_groups(layer.channels, mc_classes) if layer.is_feature and mc_classes else None
        kept = top_channels(importance, counts[layer.name], groups)
        kept_all[layer.name] = kept
        inputs = [a.detach()[:, kept] for a in capture.inputs]
        del capture, capture_next
        if targets is None:
            targets = {}
        if layer.reader_name not in targets:
            module = original_modules[layer.reader_name]
            targets[layer.reader_name] = _outputs(original, module, calibration)
        total = layer.channels
        removed = sorted(set(range(total)) - set(kept))
        if removed:
            graph = dependency_graph(model, example)
            graph.get_pruning_group(
                modules[layer.name], tp.prune_conv_out_channels, removed
            ).prune()
        refit_reader(reader, inputs, targets[layer.reader_name])
        if progress is not None:
            progress(f"layer {index + 1}/{len(layers)} {layer.name}: kept {len(kept)}/{total}")


def _next_pruned(
    layers: Sequence[PrunableLayer], index: int, reader_name: str
) -> PrunableLayer | None:
    """The prunable layer that is this layer's reader (its output channels are pruned next)."""
    return next((x for x in layers[index + 1 :] if x.name == reader_name), None)


@torch.no_grad()
def _outputs(model: nn.Module, module: nn.Module, calibration: Calibration) -> list[Tensor]:
    """``module``'s outputs in ``model`` for each calibration batch."""
    outs: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: outs.append(o.detach()))
    try:
        for x, _ in calibration:
            calibration.scores(model, x)
    finally:
        handle.remove()
    return outs
