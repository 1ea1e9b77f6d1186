"""Group by group pruning on calibration images: what the readers of a group see, and the
least-squares refit of the readers after their input channels are removed.

For the groups in forward order :func:`prune_in_order` runs the calibration images through the
partly pruned model, records at each reader of the group (``Conv2d``/``Linear``) its input
columns at ``POSITIONS`` sampled output positions per image (``unfold``; one position for a
``Linear``), and, when a criterion needs them, the loss term ``mean_images |sum_positions
(dL/da_c) a_c|`` at its input and at its output (the gradient of the summed cross-entropy
reaching the reader through its own input only). A ``choose`` function picks the channels
the group keeps; the group is pruned (Torch-Pruning); with ``refit`` every reader is re-fitted
by least squares (a small ridge) so that, on the sampled positions, it reproduces the
*original* model's output from the pruned model's input (He, Zhang, Sun, "Channel Pruning for
Accelerating Very Deep Neural Networks", ICCV 2017, Sec. 3.1, second step; ThiNet, Luo, Wu,
Lin, ICCV 2017, Sec. 3.3). The refit is available to every criterion (``--refit``).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chanloss.models.pruned import build_graph, prune_group, sync_feature_width
from chanloss.pruning.criteria import Calibration
from chanloss.pruning.graph import Member, PruneGroup

POSITIONS = 16  # output positions sampled per image and reader (the rows of the refit)


@dataclass
class ReaderData:
    """What one reader of a group saw on the calibration images."""

    member: Member
    module: nn.Module
    columns: list[Tensor] = field(default_factory=list)  # (B, C_in * k * k, P) per batch
    loss_in: Tensor | None = None  # (C_in,) loss term at the input positions
    loss_out: Tensor | None = None  # (C_out,) loss term at the output channels


def sample_positions(name: str, batch: int, length: int) -> Tensor:
    """The output positions (seeded by reader name and batch) a reader is sampled at."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{name}/{batch}".encode()))
    return torch.randperm(length, generator=generator)[: min(POSITIONS, length)]


def columns(module: nn.Module, a: Tensor, positions: Tensor) -> Tensor:
    """The reader's input ``a`` as columns ``(B, C_in * k * k, P)`` at ``positions``."""
    if isinstance(module, nn.Linear):
        return a.detach().flatten(1)[:, :, None]
    cols = F.unfold(a.detach(), module.kernel_size, module.dilation, module.padding, module.stride)
    return cols[:, :, positions.to(cols.device)]


def outputs_at(module: nn.Module, y: Tensor, positions: Tensor) -> Tensor:
    """The reader's output ``(B, C_out, P)`` at ``positions``."""
    if isinstance(module, nn.Linear):
        return y.detach()[:, :, None]
    return y.detach().flatten(2)[:, :, positions.to(y.device)]


def _output_length(module: nn.Module, a: Tensor) -> int:
    if isinstance(module, nn.Linear):
        return 1
    h, w = a.shape[2:]
    k, s, p, d = module.kernel_size, module.stride, module.padding, module.dilation
    out_h = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    out_w = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    return out_h * out_w


def _taylor(a: Tensor, g: Tensor | None) -> Tensor:
    """``|sum_positions g * a|`` per image and channel, summed over images."""
    g = g if g is not None else torch.zeros_like(a)
    product = (g * a).detach()
    return (product.flatten(2).sum(2) if product.dim() > 2 else product).abs().sum(0)


def capture(
    model: nn.Module,
    readers: Sequence[Member],
    calibration: Calibration,
    *,
    grad: bool,
) -> list[ReaderData]:
    """Run the calibration images through ``model``, recording each reader (module text)."""
    data = [ReaderData(r, model.get_submodule(r.name)) for r in readers]
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:  # only the gradients at the readers' inputs and outputs are needed
        p.requires_grad_(False)
    try:
        return _capture(model, data, calibration, grad)
    finally:
        for p in trainable:
            p.requires_grad_(True)


def _capture(
    model: nn.Module, data: list[ReaderData], calibration: Calibration, grad: bool
) -> list[ReaderData]:
    count = 0
    model.eval()
    for batch, (x, y) in enumerate(calibration):
        seen: dict[int, list[Any]] = {}
        hooks = []
        for i, item in enumerate(data):
            hooks.append(item.module.register_forward_pre_hook(_pre(seen, i, grad)))
            hooks.append(
                item.module.register_forward_hook(_post(seen, i, grad, batch, item.member.name))
            )
        try:
            with torch.set_grad_enabled(grad):
                loss = calibration.loss(model, x, y)
                if grad:
                    loss.backward()
        finally:
            for h in hooks:
                h.remove()
        count += int(y.shape[0])
        for i, item in enumerate(data):
            a, out, cols, probe = seen[i]
            item.columns.append(cols)
            if grad:
                item.loss_in = _add(item.loss_in, _taylor(a, probe.grad))
                item.loss_out = _add(item.loss_out, _taylor(out, out.grad))
    for item in data:
        if item.loss_in is not None and item.loss_out is not None:
            item.loss_in, item.loss_out = item.loss_in / count, item.loss_out / count
    return data


def _add(total: Tensor | None, part: Tensor) -> Tensor:
    return part if total is None else total + part


def _pre(seen: dict, index: int, grad: bool) -> Callable:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if not grad:
            seen[index] = [args[0], None, None, None]
            return None
        # a zero probe added to this reader's input only: its gradient is the gradient
        # through this reader, while the input keeps its own graph for the earlier readers
        probe = torch.zeros_like(args[0], requires_grad=True)
        seen[index] = [args[0], None, None, probe]
        return (args[0] + probe, *args[1:])

    return hook


def _post(seen: dict, index: int, grad: bool, batch: int, name: str) -> Callable:
    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        if grad and output.requires_grad:
            output.retain_grad()
        a = seen[index][0]
        positions = sample_positions(name, batch, _output_length(module, a))
        seen[index][1:3] = [output, columns(module, a, positions)]

    return hook


@torch.no_grad()
def original_outputs(
    model: nn.Module, names: Sequence[str], calibration: Calibration
) -> dict[str, list[Tensor]]:
    """Each named layer's outputs ``(B, C_out, P)`` at its sampled positions, per batch."""
    outs: dict[str, list[Tensor]] = {n: [] for n in names}
    for batch, (x, _) in enumerate(calibration):
        hooks = []
        for name in names:
            module = model.get_submodule(name)

            def keep(m: nn.Module, i: Any, o: Tensor, name: str = name, batch: int = batch) -> None:
                positions = sample_positions(name, batch, 1 if o.dim() == 2 else o[0, 0].numel())
                outs[name].append(outputs_at(m, o, positions))

            hooks.append(module.register_forward_hook(keep))
        try:
            calibration.scores(model, x)
        finally:
            for h in hooks:
                h.remove()
    return outs


def refit_reader(
    module: nn.Module,
    cols: Sequence[Tensor],
    targets: Sequence[Tensor],
    ridge: float = 1e-4,
) -> None:
    """Least-squares weights of ``module`` (already pruned) mapping the columns ``cols``
    ``(B, C_in k k, P)`` to ``targets`` ``(B, C_out, P)`` (minus the bias)."""
    weight = module.weight
    gram, cross = None, None
    for a, y in zip(cols, targets, strict=True):
        a, y = a.double(), y.double()
        if module.bias is not None:
            y = y - module.bias.detach().double().view(1, -1, 1)
        x = a.transpose(1, 2).reshape(-1, a.shape[1])
        t = y.transpose(1, 2).reshape(-1, y.shape[1])
        g, c = x.t() @ x, x.t() @ t
        gram = g if gram is None else gram + g
        cross = c if cross is None else cross + c
    scale = ridge * float(torch.diagonal(gram).mean().clamp_min(1e-12))
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram + scale * eye, cross)  # (C_in k k, C_out)
    with torch.no_grad():
        weight.copy_(solution.t().reshape(weight.shape).to(weight.dtype))


Choose = Callable[[PruneGroup, list[ReaderData] | None], list[int]]


def prune_in_order(
    model: nn.Module,
    groups: Sequence[PruneGroup],
    calibration: Calibration,
    example: Tensor,
    *,
    choose: Choose,
    needs_capture: bool,
    needs_grad: bool,
    refit: bool,
    targets: dict[str, list[Tensor]],
    original: nn.Module,
    feature: str | None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[int]]:
    """Prune ``model`` in place group by group (module text); the kept channels per root.

    ``targets`` caches the original model's reader outputs by reader name across calls."""
    graph = build_graph(model, example)
    if refit:  # the original model's reader outputs, in one pass for every group
        missing = sorted({r.name for g in groups for r in g.readers} - set(targets))
        targets.update(original_outputs(original, missing, calibration))
    out_kept: dict[str, Tensor] = {}  # a writer's original output channels still present
    kept_all: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        wanted = needs_capture or refit
        seen = capture(model, group.readers, calibration, grad=needs_grad) if wanted else None
        kept = choose(group, seen)
        kept_all[group.root] = kept
        removed = sorted(set(range(group.channels)) - set(kept))
        prune_group(graph, model.get_submodule(group.root), removed)
        for writer in group.writers:  # each layer's outputs belong to one group
            out_kept[writer.name] = torch.nonzero(_kept_positions(writer, kept)).flatten()
        if refit and removed and seen is not None:
            _refit_readers(group, seen, kept, targets, out_kept)
        if progress is not None:
            progress(
                f"group {index + 1}/{len(groups)} {group.root} ({group.members} layers): "
                f"kept {len(kept)}/{group.channels}"
            )
    if feature is not None and feature in kept_all:
        sync_feature_width(model, len(kept_all[feature]))
    return kept_all


def _kept_positions(member: Member, kept: Sequence[int]) -> Tensor:
    """A mask over the member's positions (at full width): True where the channel is kept."""
    width = max(member.positions) + 1
    mask = torch.ones(width, dtype=torch.bool)
    channel_of = torch.as_tensor(member.channel_of)
    positions = torch.as_tensor(member.positions)
    mask[positions[~torch.isin(channel_of, torch.as_tensor(list(kept)))]] = False
    return mask


def _refit_readers(
    group: PruneGroup,
    seen: list[ReaderData],
    kept: Sequence[int],
    targets: dict[str, list[Tensor]],
    out_kept: dict[str, Tensor],
) -> None:
    for item in seen:
        module = item.module
        keep = _kept_positions(item.member, kept)
        inputs = module.weight.shape[1] if isinstance(module, nn.Conv2d) else module.in_features
        if inputs != int(keep.sum()):
            continue  # the reader reads other groups' channels too: left as it is
        per_input = item.columns[0].shape[1] // keep.numel()
        column_mask = keep.repeat_interleave(per_input)
        cols = [c[:, column_mask.to(c.device)] for c in item.columns]
        wanted = targets[item.member.name]
        rows = out_kept.get(item.member.name)
        if rows is not None:
            wanted = [t[:, rows.to(t.device)] for t in wanted]
        refit_reader(module, cols, wanted)
