"""The time of ``chanloss tune``: the ETA of the whole command, and what a short ``--timeout``
leaves for the search once the runs after it (re-runs, folds, final runs) are reserved."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

__all__ = ["MIN_SEARCH_TRIALS", "Budget", "eta_seconds", "fold_power_ratio", "short_budget_line"]

MIN_SEARCH_TRIALS = 10  # fewer trials than this in the budget: say what --folds 3 would buy


@dataclass(frozen=True)
class Budget:
    """The runs after the search, in plain values: ``top`` re-runs, then the k-fold
    confirmation (``folds``) or ``confirm_seeds`` seeds, ``jobs`` at a time; a fold or final
    run trains on the whole training split (``val_fraction`` of it held out in a trial)."""

    top: int
    folds: int
    confirm_seeds: int
    jobs: int
    val_fraction: float

    def runs_after_search(self) -> int:
        """Full training runs after the search: the re-run top trials, then the k-fold
        confirmation (2 per fold) and the two final runs, or 2 per --confirm-seeds seed."""
        confirm = 2 * self.folds + 2 if self.folds else 2 * self.confirm_seeds
        return self.top + confirm

    def reserve(self, durations: list[float]) -> float:
        """Seconds to keep for the runs after the search: the median full-trial time for each
        re-run, and that over ``1 - data.val_fraction`` for each fold and final run (they
        train on as many images per run as the whole training split holds)."""
        if not durations:
            return 0.0
        median = statistics.median(durations)
        whole = 1.0 / max(1.0 - self.val_fraction, 0.5)
        confirm = self.runs_after_search() - self.top
        return (math.ceil(self.top / self.jobs) + math.ceil(confirm / self.jobs) * whole) * median

    def after_s(self, stage: str, durations: list[float]) -> float:
        """Seconds the runs after ``stage`` (``choose``, ``folds``, ``final``) will take, at the
        median trial's time (``durations``: the complete trials'; fold and final runs on the
        whole training split's images)."""
        if not durations:
            return 0.0
        run = statistics.median(durations) / max(1.0 - self.val_fraction, 0.5)
        runs = {"choose": 2 * self.folds + 2 if self.folds else 2 * self.confirm_seeds,
                "folds": 2 if self.folds else 0, "final": 0}[stage]  # fmt: skip
        return math.ceil(runs / self.jobs) * run

    def short_line(self, timeout_s: float, durations: list[float]) -> str:
        """:func:`short_budget_line` at the median of ``durations``."""
        whole = 1.0 / max(1.0 - self.val_fraction, 0.5)
        return short_budget_line(timeout_s=timeout_s, trial_s=statistics.median(durations),
                                 top=self.top, folds=self.folds, jobs=self.jobs, whole=whole)  # fmt: skip


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
    the folds and the final runs: :meth:`Budget.reserve`). The search
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

    def reserve(k: int) -> float:  # as Budget.reserve: rounds of `jobs` runs
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
