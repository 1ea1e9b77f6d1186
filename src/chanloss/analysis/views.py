"""The quantities behind the CC and MC views of a trained model (batched, no class loops).

- Channel-attention vectors: CC-Loss's squeeze-and-excitation attention when the run trained
  one (Song et al., ICPR 2020, as reconstructed in :class:`chanloss.losses.CCLoss`), otherwise
  :func:`gap_attention`, the per-sample max-normalised global average of the features.
- Per-class means of per-sample vectors (:func:`class_means`): the class x channel attention
  matrix and the class x group activation matrix; :func:`class_correlation` of the former.
- MC-Loss groups (Chang et al., IEEE TIP 2020, Sec. III): the ``C`` channels split into ``K``
  consecutive groups exactly as :class:`chanloss.losses.mc_loss.MCLoss` defines them
  (:func:`channel_groups`); the group activations are MC-Loss's own ``dis`` scores
  (cross-channel pooling, then GAP; Eqs. 3-5) and :func:`group_diversity` is the per-sample,
  per-group diversity of Eqs. 7-8 as the loss defines it, ``1 - S[b, g] / size(g)``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from chanloss.losses.mc_loss import MCLoss

__all__ = [
    "channel_groups",
    "class_correlation",
    "class_means",
    "gap_attention",
    "group_diversity",
    "normalised_group_maps",
]


def _check_features(features: object) -> Tensor:
    if not isinstance(features, Tensor) or features.dim() != 4 or not features.is_floating_point():
        got = (
            f"shape {tuple(features.shape)} and dtype {features.dtype}"
            if isinstance(features, Tensor)
            else type(features).__name__
        )
        raise ValueError(f"features must be a floating-point (B, C, H, W) tensor, got {got}")
    return features


def gap_attention(features: Tensor) -> Tensor:
    """Channel "attention" of a model without an attention module, ``(B, C)``.

    ``z = GAP(F)`` (the squeeze of squeeze-and-excitation), divided per sample by its largest
    absolute value: ``a = z / max_c |z_c|``. For the non-negative (post-ReLU) features of the
    built-in backbones ``a`` lies in ``[0, 1]`` like a sigmoid attention, and the per-sample
    division removes the image's overall activation strength, so only the *pattern* over the
    channels is compared (as with an attention vector). An all-zero ``z`` stays 0.
    """
    z = _check_features(features).float().mean(dim=(2, 3))
    scale = z.abs().amax(dim=1, keepdim=True)
    return z / torch.where(scale > 0, scale, torch.ones_like(scale))


def class_means(values: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``M[k] = mean_{i: y_i = k} values[i]``, ``(K, D)`` float64; a class without samples is NaN."""
    if not isinstance(values, Tensor) or values.dim() != 2:
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"values must be a (N, D) tensor, got {got}")
    if not isinstance(labels, Tensor) or labels.shape != (values.shape[0],):
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a ({values.shape[0]},) tensor, got {got}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    values = values.detach().to(torch.float64)
    labels = labels.to(values.device, torch.int64)
    sums = values.new_zeros(num_classes, values.shape[1]).index_add_(0, labels, values)
    counts = torch.bincount(labels, minlength=num_classes).to(values.dtype)
    return sums / counts[:, None]  # 0 / 0 = NaN for empty classes


def class_correlation(matrix: Tensor) -> Tensor:
    """Pearson correlation between the rows of ``matrix`` ``(K, C)``: ``(K, K)``.

    Entry ``(k, l)`` is the correlation, over the channels, of the mean attention vectors of
    classes ``k`` and ``l``. A constant (or NaN) row gives NaN in its row and column.
    """
    if not isinstance(matrix, Tensor) or matrix.dim() != 2:
        got = tuple(matrix.shape) if isinstance(matrix, Tensor) else type(matrix).__name__
        raise ValueError(f"matrix must be a (K, C) tensor, got {got}")
    m = matrix.to(torch.float64)
    centred = m - m.mean(dim=1, keepdim=True)
    norm = centred.norm(dim=1, keepdim=True)
    unit = centred / torch.where(norm > 0, norm, torch.full_like(norm, float("nan")))
    return (unit @ unit.T).clamp(-1.0, 1.0)


def channel_groups(num_channels: int, num_classes: int, *, pool: str = "max") -> MCLoss:
    """An :class:`MCLoss` (eval mode) that defines the ``K`` consecutive channel groups.

    Its ``group_sizes``, ``group_index`` and ``group_scores`` are the grouping of MC-Loss itself,
    so runs trained without MC-Loss are viewed through the same groups. ``num_channels`` must be
    at least ``num_classes`` (MC-Loss's own requirement).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # groups of one channel: expected for small models
        return MCLoss(num_classes=num_classes, num_channels=num_channels, pool=pool).eval()


def group_diversity(features: Tensor, groups: MCLoss) -> Tensor:
    """Per-sample, per-group diversity ``1 - S[b, g] / size(g)``, ``(B, K)``.

    ``S[b, g] = sum_p max_{c in g} softmax_p(F[b, c])`` (softmax over the ``H * W`` positions of
    each channel, cross-channel max pooling, summed over positions), on the unmasked features.
    Its mean over ``b, g`` is MC-Loss's ``div`` term. Lower = the group's channels peak at
    different places.
    """
    features = _check_features(features)
    b, c, h, w = features.shape
    if c != groups.num_channels:
        raise ValueError(
            f"features must have {groups.num_channels} channels (the groups' C), got {c}"
        )
    p = torch.softmax(features.float().reshape(b, c, h * w), dim=-1)
    index = groups.group_index.to(p.device).view(1, c, 1).expand_as(p)
    pooled = p.new_zeros(b, groups.num_classes, h * w).scatter_reduce(
        1, index, p, reduce="amax", include_self=False
    )
    sizes = torch.tensor(groups.group_sizes, dtype=p.dtype, device=p.device)
    return 1.0 - pooled.sum(-1) / sizes


def normalised_group_maps(features: Tensor, groups: MCLoss, labels: Tensor) -> list[Tensor]:
    """For every sample, the maps ``(size(g), H, W)`` of its true class's group ``g``.

    Each sample's maps are divided by their common maximum (after clamping at 0), so they lie
    in ``[0, 1]`` and keep their relative strength within the group: the same colour scale
    for every sample and every run.
    """
    features = _check_features(features)
    starts = torch.tensor((0, *groups.group_sizes)).cumsum(0).tolist()
    maps = []
    for x, y in zip(features.detach().float(), labels.tolist(), strict=True):
        m = x[starts[y] : starts[y + 1]].clamp_min(0.0)
        top = m.max()
        maps.append(m / top if top > 0 else m)
    return maps
