"""Class-separability metrics of a set of vectors (embeddings or channel-attention vectors).

All three metrics take points ``X`` ``(N, D)`` and integer labels ``y`` ``(N,)`` and are computed
in float64:

- :func:`distance_ratio`: mean Euclidean distance over same-class pairs divided by the mean over
  different-class pairs (0 for collapsed, well-separated classes; about 1 when the labels carry
  no information about position).
- :func:`silhouette`: scikit-learn's mean silhouette coefficient (Rousseeuw 1987), Euclidean.
- :func:`fisher_ratio`: ``tr(S_B) / tr(S_W)`` of Fisher's linear discriminant scatter matrices.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["distance_ratio", "fisher_ratio", "separability", "silhouette"]

# Rows of the distance matrix computed at once by distance_ratio (bounds its memory).
_CHUNK = 1024


def _as_points(points: object, labels: object) -> tuple[Tensor, Tensor]:
    """``(X float64 (N, D), y int64 (N,))``; a ``ValueError`` names what is wrong."""
    x = torch.as_tensor(np.asarray(points) if not isinstance(points, Tensor) else points)
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
    if x.dim() != 2 or not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise ValueError(
            f"points must be a real (N, D) array, got shape {tuple(x.shape)} and dtype {x.dtype}"
        )
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(
            f"labels must be an integer (N,) array, got shape {tuple(y.shape)} and dtype {y.dtype}"
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"points and labels must have the same length N, got {x.shape[0]} points and "
            f"{y.shape[0]} labels"
        )
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 points, got {x.shape[0]}")
    x = x.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("points must be finite, got NaN or inf values")
    return x, y.detach().to("cpu", torch.int64)


def distance_ratio(points: object, labels: object) -> float:
    """Mean intra-class over mean inter-class Euclidean distance.

    ``ratio = mean_{(i, j): i != j, y_i = y_j} ||x_i - x_j|| / mean_{(i, j): y_i != y_j}
    ||x_i - x_j||`` over ordered pairs. ``NaN`` when there is no different-class pair (one
    class) or no same-class pair (every class a singleton); ``inf`` when every different-class
    pair coincides while same-class pairs do not. Rows are processed in chunks, so memory is
    ``O(chunk * N)``.
    """
    x, y = _as_points(points, labels)
    n = x.shape[0]
    intra = inter = 0.0
    n_intra = n_inter = 0
    for start in range(0, n, _CHUNK):
        rows = slice(start, min(n, start + _CHUNK))
        # Direct differences (not the Gram form) keep exact zeros for coincident points.
        d = torch.cdist(x[rows], x, compute_mode="donot_use_mm_for_euclid_dist")
        same = y[rows, None] == y[None, :]
        idx = torch.arange(rows.start, rows.stop)
        same[idx - rows.start, idx] = False  # drop i == j
        diff = y[rows, None] != y[None, :]
        intra += float(d[same].sum())
        inter += float(d[diff].sum())
        n_intra += int(same.sum())
        n_inter += int(diff.sum())
    if n_intra == 0 or n_inter == 0:
        return math.nan
    mean_intra, mean_inter = intra / n_intra, inter / n_inter
    if mean_inter == 0.0:
        return math.inf if mean_intra > 0 else math.nan
    return mean_intra / mean_inter


def silhouette(points: object, labels: object) -> float:
    """Mean silhouette coefficient, ``sklearn.metrics.silhouette_score`` (Euclidean).

    ``s_i = (b_i - a_i) / max(a_i, b_i)`` with ``a_i`` the mean distance to the other points of
    its class and ``b_i`` the smallest mean distance to another class; in ``[-1, 1]``. ``NaN``
    unless ``2 <= number of classes <= N - 1`` (where scikit-learn leaves it undefined).
    """
    from sklearn.metrics import silhouette_score

    x, y = _as_points(points, labels)
    n_classes = int(torch.unique(y).numel())
    if not 2 <= n_classes <= x.shape[0] - 1:
        return math.nan
    return float(silhouette_score(x.numpy(), y.numpy(), metric="euclidean"))


def fisher_ratio(points: object, labels: object) -> float:
    """Fisher's criterion ``tr(S_B) / tr(S_W)`` (Fisher 1936; Duda, Hart & Stork, Sec. 3.8).

    With ``mu`` the mean of all ``N`` points, ``mu_k`` the mean and ``n_k`` the count of class
    ``k``:

    - between-class scatter ``S_B = sum_k n_k (mu_k - mu)(mu_k - mu)^T``, so
      ``tr(S_B) = sum_k n_k ||mu_k - mu||^2``;
    - within-class scatter ``S_W = sum_k sum_{i: y_i = k} (x_i - mu_k)(x_i - mu_k)^T``, so
      ``tr(S_W) = sum_i ||x_i - mu_{y_i}||^2``.

    Both are sums, not averages (``tr(S_B) + tr(S_W) = tr(S_T)``, the total scatter). Higher
    is more separable; it is invariant to a global scale and rotation. ``inf`` when the
    classes are points (``tr(S_W) = 0``) that differ, ``NaN`` when all points coincide.
    """
    x, y = _as_points(points, labels)
    classes, index = torch.unique(y, return_inverse=True)
    k = classes.numel()
    counts = torch.bincount(index, minlength=k).to(x.dtype)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, index, x)
    means = sums / counts[:, None]
    mu = x.mean(0)
    between = float((counts * (means - mu).square().sum(1)).sum())
    within = float((x - means[index]).square().sum())
    if within == 0.0:
        return math.inf if between > 0 else math.nan
    return between / within


def separability(points: object, labels: object) -> dict[str, float]:
    """``{"ratio": ..., "silhouette": ..., "fisher": ...}`` of the three metrics above."""
    return {
        "ratio": distance_ratio(points, labels),
        "silhouette": silhouette(points, labels),
        "fisher": fisher_ratio(points, labels),
    }
