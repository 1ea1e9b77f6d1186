"""Channel importance of the standard criteria, and the calibration batches they read.

- ``l1``: the L1 norm of each filter, ``sum |W[c]|`` (Li, Kadav, Durdanovic, Samet, Graf,
  "Pruning Filters for Efficient ConvNets", ICLR 2017, Sec. 3.1).
- ``bn_scale``: ``|gamma_c|`` of the batch norm after the convolution (Liu et al., "Learning
  Efficient Convolutional Networks through Network Slimming", ICCV 2017; the sparsity
  training of that paper is not part of this criterion).
- ``taylor``: first-order Taylor estimate of the loss change when the channel is removed,
  on its BN parameters: ``(gamma_c g_gamma_c + beta_c g_beta_c)^2`` per calibration batch,
  averaged over batches (Molchanov, Mallya, Tyree, Frosio, Kautz, "Importance Estimation for
  Neural Network Pruning", CVPR 2019, eq. 8 for a group of parameters, applied to BN);
  on the filter's weights when the layer has no BN. Computed once, not iteratively.
- ``random``: uniform scores from a seeded generator.

Larger is more important; every method keeps the top channels of each layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chanloss.pruning.graph import PrunableLayer, PruneError

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


def l1_importance(layer: PrunableLayer) -> Tensor:
    """``sum |W[c]|`` over each output filter of the layer's convolution (Li et al. 2017)."""
    return layer.conv.weight.detach().abs().flatten(1).sum(1)


def bn_scale_importance(layer: PrunableLayer) -> Tensor:
    """``|gamma_c|`` of the BN after the convolution (network slimming)."""
    if layer.bn is None or layer.bn.weight is None:
        raise PruneError(
            f"method bn_scale needs a batch norm with a scale after each pruned layer; "
            f"{layer.name} has none (expected another --method)"
        )
    return layer.bn.weight.detach().abs()


def random_importance(layer: PrunableLayer, generator: torch.Generator) -> Tensor:
    """Uniform random scores (a control: what any criterion must beat)."""
    return torch.rand(layer.channels, generator=generator)


def taylor_importance(
    model: nn.Module, layers: Sequence[PrunableLayer], calibration: Calibration
) -> dict[str, Tensor]:
    """Molchanov et al. 2019 first-order Taylor scores of every layer (see the module text)."""
    params = {layer.name: _channel_params(layer) for layer in layers}
    totals = {layer.name: torch.zeros(layer.channels) for layer in layers}
    model.eval()
    for x, y in calibration:
        model.zero_grad(set_to_none=True)
        (calibration.loss(model, x, y) / y.shape[0]).backward()
        for layer in layers:
            contribution = torch.zeros(layer.channels)
            for param in params[layer.name]:
                if param.grad is not None:
                    product = (param.grad * param).detach().reshape(layer.channels, -1)
                    contribution += product.sum(1).cpu()
            totals[layer.name] += contribution.square()
    model.zero_grad(set_to_none=True)
    return {name: total / len(calibration.batches) for name, total in totals.items()}


def _channel_params(layer: PrunableLayer) -> list[Tensor]:
    """The parameters whose first axis is the layer's channel: BN's scale and shift (the
    gate position of Molchanov et al. 2019), or the filters when there is no BN."""
    if layer.bn is not None and layer.bn.weight is not None:
        return [layer.bn.weight, layer.bn.bias]
    return [p for p in (layer.conv.weight, layer.conv.bias) if p is not None]


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
