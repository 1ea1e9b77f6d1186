"""The time of ``chanloss tune``: the ETA of the whole command, and what a short ``--timeout``
leaves for the search once the runs after it (re-runs, folds, final runs) are reserved."""

from __future__ import annotations

import math

__all__ = ["MIN_SEARCH_TRIALS", "eta_seconds", "fold_power_ratio", "short_budget_line"]

MIN_SEARCH_TRIALS = 10  # fewer trials than this in the budget: say what --folds 3 would buy


def eta_seconds(
    *,
    now: float,
    deadline: float | None,
    trials_left: int | None,
    trial_s: float,
    jobs: int,
    after_s: float,
) -> float:
    """Seconds until the whole command ends: the search left, then ``after_s`` (the re-runs,
    the folds and the final runs: :meth:`~chanloss.tuning.tuner.Tuner.reserve`). The search
    left is ``trials_left`` trials of ``trial_s`` seconds, ``jobs`` at a time, and ends at the
    latest when the time left before ``deadline`` is ``after_s`` (with a deadline and no trial
    count: then)."""
    until = max(0.0, deadline - after_s - now) if deadline is not None else math.inf
    search = math.ceil(trials_left / jobs) * trial_s if trials_left is not None else math.inf
    search = min(search, until)
    return (search if math.isfinite(search) else 0.0) + after_s


def fold_power_ratio(fewer: int, more: int) -> float:
    """How many times larger the smallest detectable gain of the paired test is with ``fewer``
    folds than with ``more``, at the same spread of the fold differences:
    ``(t_crit + t_power) / sqrt(K)`` at each K."""
    from chanloss.tuning.stats import ALPHA, POWER, _t_quantile

    def detectable(k: int) -> float:
        return (_t_quantile(1 - ALPHA / 2, k - 1) + _t_quantile(POWER, k - 1)) / math.sqrt(k)

    return detectable(fewer) / detectable(more)


def short_budget_line(
    *, timeout_s: float, trial_s: float, top: int, folds: int, jobs: int, whole: float
) -> str:
    """When the runs after the search leave the ``timeout_s`` budget fewer than
    :data:`MIN_SEARCH_TRIALS` search trials of ``trial_s`` seconds: a line saying so, and what
    ``--folds 3`` would buy and cost (``whole``: a fold or final run's time over a trial's);
    empty otherwise."""

    def reserve(k: int) -> float:  # as Tuner.reserve: rounds of `jobs` runs
        return (math.ceil(top / jobs) + math.ceil((2 * k + 2) / jobs) * whole) * trial_s

    def trials(k: int) -> int:
        return max(0, math.floor((timeout_s - reserve(k)) / trial_s * jobs))

    if folds <= 3 or trials(folds) >= MIN_SEARCH_TRIALS:
        return ""
    return (
        f"budget: the runs after the search ({top} re-runs, {2 * folds} fold runs, 2 final "
        f"runs; about {round(reserve(folds) / 60)} min) leave the search about {trials(folds)} "
        f"trials of the --timeout; --folds 3 would leave about {trials(3)}, but a gain must "
        f"then be about {fold_power_ratio(3, folds):.1f} times larger to be found beyond noise"
    )
