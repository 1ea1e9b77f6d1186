"""CPLI as we reconstruct it, for whole groups: channel pruning guided by classification loss
and feature importance (Guo, Ouyang, Xu, AAAI 2020).

The paper's abstract: layer by layer, choose channels not only by how well the next layer's
features can be reconstructed but also by the classification loss, and suppress in the
reconstruction the features that the next pruning stage removes. Its full text and code were
not available; everything below is our reading (docs/pruning.md lists the choices).

For the groups in forward order (:func:`chanloss.pruning.sequential.prune_in_order`), on
calibration images of the training split, with ``a`` a reader's input and ``z_c`` the part of
the reader's output that channel ``c`` contributes (``W[:, c] * a_c`` at sampled positions):

- loss term ``s_c``: ``mean_images |sum_positions (dL/da_c) a_c|`` summed over *every* reader
  of the group (the first-order change of the cross-entropy when ``c`` is removed there);
- reconstruction error of a set ``R`` of removed channels: ``E(R) = sum_readers
  ||sum_{c in R} z_c||_w^2 / ||sum_c z_c||_w^2`` with ``G_r = Z^T Z`` per reader, so that two
  redundant channels do not both count as needed (the objective of channel pruning by He et
  al. 2017 and ThiNet, Luo et al. 2017); ``||.||_w`` weights each output channel ``j`` of the
  reader by ``w_j``, its own loss term normalised to mean 1 when the reader's outputs belong
  to a group that is pruned too (feature importance: features due to be removed count
  little), else 1;
- greedy joint selection (ThiNet's greedy, with the loss term added): repeatedly remove the
  channel ``c`` with the least ``(1 - mix) s_c / sum(s) + mix (E(R + c) - E(R))``; the order of
  removal ranks the channels and the group keeps the last ones;
- with ``--refit`` (default for cpli) the readers are re-fitted by least squares to the
  original model's outputs.

``mix`` is chosen from ``MIX_GRID`` by the accuracy of the pruned (not fine-tuned) model on
the validation images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from chanloss.pruning.criteria import to_channels, top_channels
from chanloss.pruning.graph import PruneGroup, mc_groups
from chanloss.pruning.sequential import ReaderData

MIX_GRID = (0.0, 0.5, 1.0)
_ELEMENT_BUDGET = 2**24  # floats per chunk of the per-channel contributions


def loss_term(group: PruneGroup, seen: Sequence[ReaderData]) -> Tensor:
    """``s_c`` summed over the group's readers."""
    total = torch.zeros(group.channels, dtype=torch.float64)
    for item in seen:
        if item.loss_in is not None:
            total += to_channels(item.loss_in.double().cpu(), item.member, group.channels)
    return total


def contribution_gram(item: ReaderData, channels: int, weights: Tensor) -> Tensor:
    """``G_r = Z^T Z / trace`` of one reader: ``Z[:, c]`` the (weighted) contributions of
    group channel ``c`` to the reader's outputs at the sampled positions."""
    weight = item.module.weight.detach()
    outs, inputs = weight.shape[0], weight.shape[1]
    per_input = weight[0, 0].numel() if weight.dim() > 2 else 1
    kernel = weight.reshape(outs, inputs, per_input)
    scale = weights.to(kernel).clamp_min(0).sqrt()
    gram = torch.zeros(channels, channels, dtype=torch.float64, device=kernel.device)
    for cols in item.columns:
        batch, positions = cols.shape[0], cols.shape[2]
        step = max(1, _ELEMENT_BUDGET // max(1, inputs * outs * positions))
        for start in range(0, batch, step):
            part = cols[start : start + step].reshape(-1, inputs, per_input, positions)
            z = torch.einsum("ock,bckp->cbop", kernel, part) * scale[None, None, :, None]
            z = to_channels(z, item.member, channels).reshape(channels, -1).double()
            gram += z @ z.t()
    return (gram / torch.trace(gram).clamp_min(1e-30)).cpu()


def greedy_scores(loss: Tensor, gram: Tensor, mix: float) -> Tensor:
    """Channel scores from the greedy joint removal (see the module docstring): the step at
    which each channel would be removed (the last one left scores ``C``)."""
    channels = loss.shape[0]
    base = (1 - mix) * loss / loss.sum().clamp_min(1e-30)
    scaled = mix * gram / torch.trace(gram).clamp_min(1e-30)
    diagonal = torch.diagonal(scaled)
    overlap = torch.zeros(channels, dtype=torch.float64)  # G @ 1_R
    removed = torch.zeros(channels, dtype=torch.bool)
    score = torch.full((channels,), float(channels), dtype=torch.float64)
    for step in range(channels - 1):  # one removal per step: inherently sequential
        cost = (base + diagonal + 2 * overlap).masked_fill(removed, float("inf"))
        c = int(torch.argmin(cost))
        removed[c], score[c] = True, float(step)
        overlap += scaled[:, c]
    return score


def group_terms(
    group: PruneGroup,
    seen: Sequence[ReaderData],
    mix: float,
    pruned_writers: set[str],
) -> tuple[Tensor, Tensor]:
    """CPLI's loss term and reconstruction Gram matrix of ``group``."""
    loss = loss_term(group, seen)
    gram = torch.zeros(group.channels, group.channels, dtype=torch.float64)
    if mix > 0:
        for item in seen:
            outs = item.module.weight.shape[0]
            weights = torch.ones(outs)
            if item.member.name in pruned_writers and item.loss_out is not None:
                weights = item.loss_out.float().cpu()
                weights = weights / weights.mean().clamp_min(1e-12)
            gram += contribution_gram(item, group.channels, weights)
    return loss, gram


def group_scores(
    group: PruneGroup,
    seen: Sequence[ReaderData],
    mix: float,
    pruned_writers: set[str],
) -> Tensor:
    """CPLI's channel scores of ``group`` from what its readers saw (the greedy's order)."""
    return greedy_scores(*group_terms(group, seen, mix, pruned_writers), mix)


def cpli_chooser(
    mix: float,
    counts: dict[str, int],
    mc_classes: int | None,
    pruned_writers: set[str],
) -> Callable[[PruneGroup, list[ReaderData] | None], list[int]]:
    """The ``choose`` function of :func:`~chanloss.pruning.sequential.prune_in_order`."""

    def choose(group: PruneGroup, seen: list[ReaderData] | None) -> list[int]:
        assert seen is not None
        scores = group_scores(group, seen, mix, pruned_writers)
        parts = mc_groups(group.channels, mc_classes) if group.is_feature and mc_classes else None
        return top_channels(scores, counts[group.root], parts)

    return choose


def writers_of_pruned(groups: Sequence[PruneGroup], counts: dict[str, int]) -> set[str]:
    """The layers whose outputs lose channels under ``counts``."""
    return {w.name for g in groups if counts[g.root] < g.channels for w in g.writers}


def all_scores(
    model: nn.Module, groups: Sequence[PruneGroup], calibration, mix: float
) -> dict[str, Tensor]:
    """Scores of every group on the unpruned ``model`` for the global ranking: per channel
    (the greedy's order ranks but does not weigh), ``(1 - mix) s_c / mean(s) + mix G_cc /
    mean(diag G)``; within each group the greedy still picks which channels stay."""
    from chanloss.pruning.sequential import capture

    readers = {r.name: r for g in groups for r in g.readers}
    seen = {
        d.member.name: d for d in capture(model, list(readers.values()), calibration, grad=True)
    }
    every = {w.name for g in groups for w in g.writers}
    out = {}
    for group in groups:
        mine = [
            ReaderData(
                r,
                seen[r.name].module,
                seen[r.name].columns,
                seen[r.name].loss_in,
                seen[r.name].loss_out,
            )
            for r in group.readers
        ]
        loss, gram = group_terms(group, mine, mix, every)
        energy = torch.diagonal(gram)
        out[group.root] = (1 - mix) * loss / loss.mean().clamp_min(1e-30) + mix * energy / (
            energy.mean().clamp_min(1e-30)
        )
    return out
