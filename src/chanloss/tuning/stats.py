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
  The threshold has a floor: never below one validation image of a fold (``resolution``)
  nor below what the measured seed noise gives for K paired differences
  (``sqrt(2 / K) * noise``), and fewer than :data:`MIN_FOLDS` folds give no verdict: two
  near-identical fold differences have a near-zero spread by chance.
* :func:`stuck_flags`: a run far below its siblings (same setting, other seeds or folds).
* :func:`gain_over`: the seed-only confirmation (``--folds 0``), Welch's two-sample rule.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from chanloss.experiments.verdict import NOISE_SE, gap

__all__ = [
    "ALPHA",
    "MIN_FOLDS",
    "POWER",
    "STUCK_POINTS",
    "STUCK_Z",
    "SCORE_EPOCHS",
    "curve_score",
    "gain_over",
    "paired_fold_test",
    "pooled_seed_std",
    "smoothed",
    "noise_text",
    "stuck_flags",
    "without_stuck",
]

SCORE_EPOCHS = 3  # a run's score: the mean validation accuracy of its last 3 evaluated epochs
ALPHA = 0.05  # two-sided level of the paired test
POWER = 0.8  # the power of the "smallest detectable gain"
MIN_FOLDS = 3  # fewer paired differences give no verdict on their own
STUCK_Z = 3.0  # a stuck run: more than 3 robust standard deviations below its siblings ...
STUCK_POINTS = 0.05  # ... and at least 5 points below their median
_MAD_TO_STD = 1.4826  # the MAD of a normal sample times this estimates its standard deviation


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


def stuck_flags(
    values: Sequence[float],
    z: float = STUCK_Z,
    points: float = STUCK_POINTS,
    n_val: int | None = None,
) -> list[bool]:
    """For each run's score, whether it is *stuck*: far below its siblings (the other values:
    the same setting on other seeds or folds). A value is stuck when it lies at least
    ``points`` below the median of the others and more than ``z`` robust standard deviations
    (``1.4826 * MAD`` of the others) below it; leaving the value out of its own reference
    keeps one stuck run from hiding itself. Needs two siblings (with one, either may be the
    stuck one): fewer than 3 values are never flagged. With ``n_val`` (the validation images
    behind each value, e.g. a fold's) the gap must also exceed 4 binomial standard deviations
    of an accuracy near the median on that many images, ``4 * sqrt(m (1 - m) / n_val)``: a
    fold whose images are harder than the others' is not a stuck run."""
    flags = []
    for i, value in enumerate(values):
        others = [v for j, v in enumerate(values) if j != i]
        if len(others) < 2:
            flags.append(False)
            continue
        median = statistics.median(others)
        spread = _MAD_TO_STD * statistics.median(abs(v - median) for v in others)
        gap = median - value
        least = points
        if n_val:
            least = max(least, 4 * math.sqrt(max(median * (1 - median), 0.0) / n_val))
        flags.append(gap >= least and (spread == 0 or gap > z * spread))
    return flags


def without_stuck(groups: Sequence[Sequence[float]]) -> list[list[float]]:
    """Each group of one setting's scores on several seeds without its stuck runs
    (:func:`stuck_flags`): the seed noise is that of runs that trained."""
    return [[v for v, s in zip(g, stuck_flags(g), strict=True) if not s] for g in groups]


def noise_text(std: float, dof: int) -> str:
    """``2.10 points (1 degree of freedom: rough)``."""
    rough = ": rough" if dof == 1 else ""
    return f"{100 * std:.2f} points ({dof} degree{'s' if dof > 1 else ''} of freedom{rough})"


def _t_quantile(q: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, dof))


def paired_fold_test(
    tuned: Sequence[float],
    base: Sequence[float],
    val_share: float | None = None,
    *,
    noise: float | None = None,
    resolution: float = 0.0,
) -> dict[str, Any]:
    """The k-fold confirmation: ``tuned[i] - base[i]`` per fold (all folds of all repeats),
    mean and standard error, the two-sided paired t-test at :data:`ALPHA` that gives the
    verdict, the power line, and the Nadeau-Bengio corrected test beside it.

    ``val_share`` is n_val / n_train of one fold (``1 / (K - 1)`` for K folds); the default is
    ``1 / (n - 1)`` for ``n`` values (one repeat). The floor: the standard error is at least
    ``sqrt(2 / n) * noise`` (``noise``: the seed standard deviation of one run's score, when
    measured) and the threshold at least ``resolution`` (one validation image of a fold, as
    accuracy). Returns ``diff`` (mean difference), ``se`` (with the floor), ``se_observed``,
    ``floor`` (``"seed noise"``, ``"one image"`` or ``None``: what set the threshold), ``t``,
    ``p``, ``threshold`` (the smallest |mean difference| that counts as beyond noise),
    ``detectable`` (the smallest true gain found with probability :data:`POWER`), ``beyond``
    (``None`` under :data:`MIN_FOLDS` values, with ``reason``), ``se_corrected``,
    ``p_corrected``, ``beyond_corrected``, ``folds`` (the number of differences) and ``diffs``.
    """
    if len(tuned) != len(base):
        raise ValueError(f"paired folds: {len(tuned)} tuned vs {len(base)} base values")
    n = len(tuned)
    diffs = [a - b for a, b in zip(tuned, base, strict=True)]
    out: dict[str, Any] = {"folds": n, "diffs": diffs}
    if n < 2:
        out.update(diff=diffs[0] if diffs else math.nan, se=math.nan, t=math.nan, p=math.nan,
                   threshold=math.nan, detectable=math.nan, beyond=None, se_corrected=math.nan,
                   p_corrected=math.nan, beyond_corrected=None,
                   reason=f"{n} fold: at least {MIN_FOLDS} are needed for a verdict")  # fmt: skip
        return out
    share = 1.0 / (n - 1) if val_share is None else val_share
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    observed = math.sqrt(var / n)
    by_noise = math.sqrt(2.0 / n) * noise if noise is not None and math.isfinite(noise) else 0.0
    se = max(observed, by_noise)
    se_corrected = math.sqrt((1.0 / n + share) * max(var, n * by_noise**2))
    t_crit = _t_quantile(1 - ALPHA / 2, n - 1)
    threshold = max(t_crit * se, resolution)
    floor = (
        "one image" if resolution > t_crit * se else "seed noise" if by_noise > observed else None
    )
    p, t_value = _two_sided(mean, se, n - 1)
    p_corrected, _ = _two_sided(mean, se_corrected, n - 1)
    beyond: bool | None = abs(mean) > threshold and p < ALPHA
    out.update(diff=mean, se=se, se_observed=observed, floor=floor, t=t_value, p=p,
               threshold=threshold,
               detectable=max((t_crit + _t_quantile(POWER, n - 1)) * se, threshold),
               se_corrected=se_corrected, p_corrected=p_corrected,
               beyond_corrected=bool(p_corrected < ALPHA and abs(mean) > resolution))  # fmt: skip
    if n < MIN_FOLDS:
        beyond = None
        out["reason"] = f"{n} folds: at least {MIN_FOLDS} are needed for a verdict"
    out["beyond"] = beyond
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
    """Mean difference ``tuned - base``, its standard error (Welch), whether it lies beyond
    two standard errors (the package's one rule, :func:`chanloss.experiments.verdict.gap`) and
    ``detectable``, the true gain found so with probability :data:`POWER` (``(2 + z_power) *
    se``); ``beyond`` is None when either side has fewer than two values."""
    found = gap(tuned, base)
    if found.beyond is None:
        return {"diff": found.diff, "se": math.nan, "beyond": None, "detectable": math.nan,
                "reason": "one run each"}  # fmt: skip
    z_power = statistics.NormalDist().inv_cdf(POWER)
    return {"diff": found.diff, "se": found.se, "beyond": found.beyond,
            "detectable": (NOISE_SE + z_power) * found.se}  # fmt: skip
