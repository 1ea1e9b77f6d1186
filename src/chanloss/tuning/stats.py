"""The statistics of ``chanloss tune``: a trial's score, the seed noise, and the two verdicts.

* :func:`curve_score`: a run's score is the mean validation accuracy of its last
  :data:`SCORE_EPOCHS` evaluated epochs (less noisy than the final epoch alone).
* :func:`pooled_seed_std`: the seed standard deviation of that score, pooled over settings
  that were trained on several seeds (the config as written, the re-run top trials).
* :func:`paired_fold_test`: the k-fold confirmation, a paired t-test on the per-fold (and
  per-repeat) differences. The verdict asks what the test split's check asks: on *this*
  data set, is the gain larger than what seeds and the choice of validation images give?
  Under that null (two settings that train the same model) the fold differences are
  independent noise around zero, so the plain paired test holds its level (the calibration
  benchmark measures it). The Nadeau & Bengio (2003, "Inference for the generalization
  error", Machine Learning 52) corrected variance ``(1/n + n_val/n_train) s^2`` answers a
  wider question, whether the gain would hold on other training sets drawn from the same
  source; it is reported beside the verdict (``p_corrected``), not used for it: it needs a
  gain about 1.5 times larger at K = 5 and rarely saw gains that the test split shows.
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
    """The k-fold confirmation: ``tuned[i] - base[i]`` per fold (all folds of all repeats),
    mean and standard error, the two-sided paired t-test at :data:`ALPHA` that gives the
    verdict, the power line, and the Nadeau-Bengio corrected test beside it.

    ``val_share`` is n_val / n_train of one fold (``1 / (K - 1)`` for K folds); the default is
    ``1 / (n - 1)`` for ``n`` values (one repeat). Returns ``diff`` (mean difference), ``se``,
    ``t``, ``p``, ``threshold`` (the smallest |mean difference| that counts as beyond noise),
    ``detectable`` (the smallest true gain found with probability :data:`POWER`), ``beyond``
    (``None`` under 2 values), ``se_corrected``, ``p_corrected``, ``beyond_corrected``,
    ``folds`` (the number of differences) and ``diffs``.
    """
    if len(tuned) != len(base):
        raise ValueError(f"paired folds: {len(tuned)} tuned vs {len(base)} base values")
    n = len(tuned)
    diffs = [a - b for a, b in zip(tuned, base, strict=True)]
    out: dict[str, Any] = {"folds": n, "diffs": diffs}
    if n < 2:
        out.update(diff=diffs[0] if diffs else math.nan, se=math.nan, t=math.nan, p=math.nan,
                   threshold=math.nan, detectable=math.nan, beyond=None, se_corrected=math.nan,
                   p_corrected=math.nan, beyond_corrected=None)  # fmt: skip
        return out
    share = 1.0 / (n - 1) if val_share is None else val_share
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    se = math.sqrt(var / n)
    se_corrected = math.sqrt((1.0 / n + share) * var)
    t_crit = _t_quantile(1 - ALPHA / 2, n - 1)
    p, t_value = _two_sided(mean, se, n - 1)
    p_corrected, _ = _two_sided(mean, se_corrected, n - 1)
    out.update(diff=mean, se=se, t=t_value, p=p, threshold=t_crit * se,
               detectable=(t_crit + _t_quantile(POWER, n - 1)) * se, beyond=bool(p < ALPHA),
               se_corrected=se_corrected, p_corrected=p_corrected,
               beyond_corrected=bool(p_corrected < ALPHA))  # fmt: skip
    return out


def _two_sided(mean: float, se: float, dof: int) -> tuple[float, float]:
    """The two-sided p-value and t of a mean difference with standard error ``se``."""
    if se > 0:
        from scipy.stats import t as student

        t_value = mean / se
        return float(2 * student.sf(abs(t_value), dof)), t_value
    # every difference was the same
    return (0.0 if mean else 1.0), (math.copysign(math.inf, mean) if mean else 0.0)


def gain_over(tuned: list[float], base: list[float]) -> dict[str, Any]:
    """Mean difference ``tuned - base``, its standard error (Welch) and whether it lies beyond
    two standard errors; ``beyond`` is None when either side has fewer than two values."""
    (ma, sa), (mb, sb) = mean_std(tuned), mean_std(base)
    diff = ma - mb
    if len(tuned) < 2 or len(base) < 2:
        return {"diff": diff, "se": math.nan, "beyond": None}
    se = math.sqrt(sa**2 / len(tuned) + sb**2 / len(base))
    return {"diff": diff, "se": se, "beyond": bool(abs(diff) > 2 * se)}
