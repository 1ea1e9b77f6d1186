"""The statistics of ``chanloss tune``: a trial's score, the seed noise, and the two verdicts.

* :func:`curve_score`: a run's score is the mean validation accuracy of its last
  :data:`SCORE_EPOCHS` evaluated epochs (less noisy than the final epoch alone).
* :func:`pooled_seed_std`: the seed standard deviation of that score, pooled over settings
  that were trained on several seeds (the config as written, the re-run top trials).
* :func:`paired_fold_test`: the k-fold confirmation, a paired t-test on the per-fold
  differences with the variance correction of Nadeau & Bengio (2003, "Inference for the
  generalization error", Machine Learning 52): the K training sets overlap, so the plain
  paired t-test is too confident; the corrected variance is ``(1/K + n_val/n_train) s^2``.
* :func:`gain_over`: the seed-only confirmation (``--folds 0``), Welch's two-sample rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from chanloss.tuning.common import mean_std

__all__ = [
    "ALPHA",
    "POWER",
    "SCORE_EPOCHS",
    "curve_score",
    "gain_over",
    "paired_fold_test",
    "pooled_seed_std",
    "smoothed",
]

SCORE_EPOCHS = 3  # a run's score: the mean validation accuracy of its last 3 evaluated epochs
ALPHA = 0.05  # two-sided level of the paired test
POWER = 0.8  # the power of the "smallest detectable gain"


def curve_score(values: Sequence[float], last: int = SCORE_EPOCHS) -> float:
    """The mean of the last ``last`` values of a validation curve (all of them when shorter)."""
    if not values:
        raise ValueError("a run's score needs at least one evaluated epoch")
    tail = list(values)[-last:]
    return sum(tail) / len(tail)


def smoothed(values: Sequence[float], last: int = SCORE_EPOCHS) -> list[float]:
    """The running :func:`curve_score` of a curve: element i is the mean of values i-last+1..i."""
    return [curve_score(values[: i + 1], last) for i in range(len(values))]


def pooled_seed_std(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """The pooled within-group standard deviation of scores of the same setting on different
    seeds, and its degrees of freedom; ``(nan, 0)`` when no group has two values."""
    ss, dof = 0.0, 0
    for group in groups:
        if len(group) < 2:
            continue
        mean = sum(group) / len(group)
        ss += sum((v - mean) ** 2 for v in group)
        dof += len(group) - 1
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)


def _t_quantile(q: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, dof))


def paired_fold_test(
    tuned: Sequence[float], base: Sequence[float], val_share: float | None = None
) -> dict[str, Any]:
    """The k-fold confirmation: ``tuned[k] - base[k]`` per fold, mean and corrected standard
    error, the two-sided t-test at :data:`ALPHA`, and the power line.

    ``val_share`` is n_val / n_train of one fold (``1 / (K - 1)`` for K folds, the default).
    Returns ``diff`` (mean difference), ``se`` (corrected), ``t``, ``p``, ``threshold`` (the
    smallest |mean difference| that counts as beyond noise), ``detectable`` (the smallest
    true gain found with probability :data:`POWER`), ``beyond`` (``None`` under 2 folds),
    ``folds`` and ``diffs``.
    """
    if len(tuned) != len(base):
        raise ValueError(f"paired folds: {len(tuned)} tuned vs {len(base)} base values")
    k = len(tuned)
    diffs = [a - b for a, b in zip(tuned, base, strict=True)]
    out: dict[str, Any] = {"folds": k, "diffs": diffs}
    if k < 2:
        out.update(diff=diffs[0] if diffs else math.nan, se=math.nan, t=math.nan, p=math.nan,
                   threshold=math.nan, detectable=math.nan, beyond=None)  # fmt: skip
        return out
    share = 1.0 / (k - 1) if val_share is None else val_share
    mean = sum(diffs) / k
    var = sum((d - mean) ** 2 for d in diffs) / (k - 1)
    se = math.sqrt((1.0 / k + share) * var)
    t_crit = _t_quantile(1 - ALPHA / 2, k - 1)
    threshold = t_crit * se
    detectable = (t_crit + _t_quantile(POWER, k - 1)) * se
    if se > 0:
        from scipy.stats import t as student

        t_value = mean / se
        p = float(2 * student.sf(abs(t_value), k - 1))
    else:  # every fold gave the same difference
        t_value = math.copysign(math.inf, mean) if mean else 0.0
        p = 0.0 if mean else 1.0
    out.update(diff=mean, se=se, t=t_value, p=p, threshold=threshold, detectable=detectable,
               beyond=bool(p < ALPHA))  # fmt: skip
    return out


def gain_over(tuned: list[float], base: list[float]) -> dict[str, Any]:
    """Mean difference ``tuned - base``, its standard error (Welch) and whether it lies beyond
    two standard errors; ``beyond`` is None when either side has fewer than two values."""
    (ma, sa), (mb, sb) = mean_std(tuned), mean_std(base)
    diff = ma - mb
    if len(tuned) < 2 or len(base) < 2:
        return {"diff": diff, "se": math.nan, "beyond": None}
    se = math.sqrt(sa**2 / len(tuned) + sb**2 / len(base))
    return {"diff": diff, "se": se, "beyond": bool(abs(diff) > 2 * se)}
