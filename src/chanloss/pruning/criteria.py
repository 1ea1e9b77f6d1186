"""Channel importance of the standard criteria for whole groups, and the calibration batches.

A group's channel score sums the criterion over every layer of the group that carries the
channel (each layer's channel positions mapped onto the group's channels):

- ``l1``: the L1 norm of each output filter, ``sum |W[c]|``, summed over the group's writers
  (Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017,
  Sec. 3.1; on a residual stream, every convolution adding to it).
- ``bn_scale``: ``|gamma_c|`` summed over the group's batch norms (Liu et al., "Learning
  Efficient Convolutional Networks through Network Slimming", ICCV 2017; the sparsity
  training of that paper is not part of this criterion).
- ``taylor``: first-order Taylor estimate of the loss change when the channel is removed,
  ``(sum_params g * p)^2`` over the group's BN scales and shifts per calibration batch,
  averaged over batches (Molchanov, Mallya, Tyree, Frosio, Kautz, "Importance Estimation for
  Neural Network Pruning", CVPR 2019, eq. 8 for a group of parameters); on the writers'
  filters when the group has no BN. Computed once, not iteratively.
- ``random``: uniform scores from a seeded generator.

Larger is more important; every method keeps the top channels of each group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chanloss.pruning.graph import Member, PruneError, PruneGroup

BASELINES = ("l1", "bn_scale", "taylor", "random")

ScoreFn = Callable[[nn.Module, Tensor], Tensor]  # (model, images) -> class scores (B, K)


@dataclass
class Calibration:
    """Calibration batches (already preprocessed for the model) and how to score them."""

    batches: list[tuple[Tensor, Tensor]]
    scores: ScoreFn

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(self.batches)

    @property
    def size(self) -> int:
        return sum(int(y.shape[0]) for _, y in self.batches)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The classification loss (cross-entropy of the class scores), summed over the batch."""
        return F.cross_entropy(self.scores(model, x), y, reduction="sum")


def to_channels(values: Tensor, member: Member, channels: int) -> Tensor:
    """Per-position ``values`` (first axis: the member's positions) summed per group channel."""
    index = torch.as_tensor(member.channel_of, dtype=torch.long, device=values.device)
    picked = values[torch.as_tensor(member.positions, dtype=torch.long, device=values.device)]
    out = torch.zeros(channels, *values.shape[1:], dtype=values.dtype, device=values.device)
    return out.index_add_(0, index, picked)


def l1_importance(model: nn.Module, group: PruneGroup) -> Tensor:
    """``sum |W[c]|`` of each output filter, summed over the group's writers (Li et al. 2017)."""
    total = torch.zeros(group.channels, dtype=torch.float64)
    for writer in group.writers:
        weight = model.get_submodule(writer.name).weight.detach()
        total += to_channels(weight.abs().flatten(1).sum(1).double().cpu(), writer, group.channels)
    return total


def bn_scale_importance(model: nn.Module, group: PruneGroup) -> Tensor:
    """``|gamma_c|`` summed over the group's batch norms (network slimming)."""
    norms = [n for n in group.norms if model.get_submodule(n.name).weight is not None]
    if not norms:
        raise PruneError(
            f"method bn_scale needs a batch norm with a scale on each pruned group; the group "
            f"of {group.root} has none (expected another --method)"
        )
    total = torch.zeros(group.channels, dtype=torch.float64)
    for norm in norms:
        gamma = model.get_submodule(norm.name).weight.detach().abs().double().cpu()
        total += to_channels(gamma, norm, group.channels)
    return total


def random_importance(group: PruneGroup, generator: torch.Generator) -> Tensor:
    """Uniform random scores (a control: what any criterion must beat)."""
    return torch.rand(group.channels, generator=generator)


def taylor_importance(
    model: nn.Module, groups: Sequence[PruneGroup], calibration: Calibration
) -> dict[str, Tensor]:
    """Molchanov et al. 2019 first-order Taylor scores of every group (see the module text)."""
    params = {g.root: _channel_params(model, g) for g in groups}
    totals = {g.root: torch.zeros(g.channels, dtype=torch.float64) for g in groups}
    model.eval()
    for x, y in calibration:
        model.zero_grad(set_to_none=True)
        (calibration.loss(model, x, y) / y.shape[0]).backward()
        for group in groups:
            contribution = torch.zeros(group.channels, dtype=torch.float64)
            for member, param in params[group.root]:
                if param.grad is not None:
                    product = (
                        (param.grad * param).detach().flatten(1).sum(1)
                        if param.dim() > 1
                        else (param.grad * param).detach()
                    )
                    contribution += to_channels(product.double().cpu(), member, group.channels)
            totals[group.root] += contribution.square()
    model.zero_grad(set_to_none=True)
    return {name: total / len(calibration.batches) for name, total in totals.items()}


def _channel_params(model: nn.Module, group: PruneGroup) -> list[tuple[Member, Tensor]]:
    """The parameters whose first axis is the group's channel: BN scales and shifts (the gate
    position of Molchanov et al. 2019), or the writers' filters when there is no BN."""
    out = []
    for norm in group.norms:
        bn = model.get_submodule(norm.name)
        out += [(norm, p) for p in (bn.weight, bn.bias) if p is not None]
    if out:
        return out
    for writer in group.writers:
        layer = model.get_submodule(writer.name)
        out += [(writer, p) for p in (layer.weight, layer.bias) if p is not None]
    return out


def baseline_importance(
    method: str,
    model: nn.Module,
    groups: Sequence[PruneGroup],
    calibration: Calibration,
    seed: int,
) -> dict[str, Tensor]:
    """The scores of ``method`` (one of :data:`BASELINES`) for every group."""
    if method == "taylor":
        return taylor_importance(model, groups, calibration)
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return {g.root: random_importance(g, generator) for g in groups}
    score = l1_importance if method == "l1" else bn_scale_importance
    return {g.root: score(model, g) for g in groups}


def top_channels(importance: Tensor, count: int, groups: Sequence[range] | None) -> list[int]:
    """The ``count`` most important channels (ties to the lower index), sorted; with ``groups``
    the same number from each group (``count // len(groups)`` each)."""
    importance = importance.detach().double().cpu()
    if groups is None:
        order = torch.argsort(-importance, stable=True)[:count]
        return sorted(int(i) for i in order)
    per_group = count // len(groups)
    group_of = torch.cat([torch.full((len(g),), i) for i, g in enumerate(groups)])
    by_importance = torch.argsort(-importance, stable=True)
    order = by_importance[torch.argsort(group_of[by_importance], stable=True)]  # group, then rank
    starts = torch.tensor([g.start for g in groups])
    rank_in_group = torch.arange(len(order)) - starts[group_of[order]]
    return sorted(int(i) for i in order[rank_in_group < per_group])
