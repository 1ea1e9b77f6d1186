"""The one verdict rule of chanloss, and what a comparison shows with it.

The rule (:func:`gap`, :func:`gap_of`): a gap of two means is *beyond seed noise* when it is
larger than two standard errors of the difference, ``2 * sqrt(s_a**2 / n_a + s_b**2 / n_b)``
with ``s`` the sample standard deviation over the ``n`` seeds of each side (Welch's standard
error, which does not assume equal spreads). With fewer than two seeds on a side there is no
spread, so no verdict (``beyond`` is ``None``). ``chanloss compare`` and ``chanloss demo`` (each
config's test-accuracy gap to a baseline: :func:`gap_line`, :func:`compare_verdict`), tune's
seed-only confirmation (:func:`chanloss.tuning.stats.gain_over`) and the results page
(``tools/results_page.py``) all use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from chanloss.core.text import mean_std
from chanloss.experiments.results import ConfigResult

__all__ = ["NOISE_SE", "Gap", "compare_verdict", "gap", "gap_line", "gap_of"]

NOISE_SE = 2  # a gap counts when it is more than this many standard errors


@dataclass(frozen=True)
class Gap:
    """``diff`` = mean a - mean b; ``se`` its Welch standard error (NaN with fewer than two
    values on a side); ``beyond``: ``|diff| > 2 se`` (``None`` without a standard error)."""

    diff: float
    se: float
    beyond: bool | None

    @property
    def threshold(self) -> float:
        """The smallest ``|diff|`` beyond seed noise: ``2 se``."""
        return NOISE_SE * self.se


def gap_of(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int) -> Gap:
    """The verdict from two summaries (mean, sample standard deviation, number of seeds)."""
    diff = mean_a - mean_b
    if min(n_a, n_b) < 2:
        return Gap(diff, math.nan, None)
    se = math.sqrt(std_a**2 / n_a + std_b**2 / n_b)
    return Gap(diff, se, bool(abs(diff) > NOISE_SE * se))


def gap(a: Sequence[float], b: Sequence[float]) -> Gap:
    """The verdict of ``mean(a) - mean(b)`` from the values of each side."""
    (mean_a, std_a), (mean_b, std_b) = mean_std(list(a)), mean_std(list(b))
    return gap_of(mean_a, std_a, len(a), mean_b, std_b, len(b))


def gap_line(baseline: ConfigResult, other: ConfigResult, name: str | None = None) -> str:
    """``mc - ce: +2.10 test-accuracy points after 9 epochs, more than 2 standard errors
    (0.80 points): beyond seed noise.`` Diverged runs (:attr:`ConfigResult.diverged`) are left
    out and said so."""
    label = name or f"{other.label} - {baseline.label}"
    left_out = [f"{r.label}: {len(r.diverged)} diverged" for r in (other, baseline) if r.diverged]
    note = f" ({', '.join(left_out)}, left out)" if left_out else ""
    if not other.test_acc or not baseline.test_acc:
        return f"{label}: every run of a side diverged, nothing to compare{note}."
    found = gap_of(
        other.mean, other.std, len(other.test_acc),
        baseline.mean, baseline.std, len(baseline.test_acc),
    )  # fmt: skip
    if found.beyond is None:
        how = "one seed each, so no error bar"
    else:
        se = 100 * found.se
        if found.beyond:
            how = f"more than 2 standard errors ({2 * se:.2f} points): beyond seed noise"
        else:
            how = f"within 2 standard errors ({2 * se:.2f} points): not a reliable difference"
    epochs = other.config.epochs
    return (
        f"{label}: {100 * found.diff:+.2f} test-accuracy points after {epochs} epoch"
        f"{'s' if epochs != 1 else ''}, {how}{note}."
    )


def compare_verdict(results: list[ConfigResult]) -> str:
    """One line per config after the first: its gap to the first (the baseline), then how to
    read it."""
    if len(results) < 2:
        return "one config: nothing to compare it with (give a second -c, e.g. the CE baseline)."
    baseline = results[0]
    lines = [f"Against {baseline.label} (the first config):"]
    lines += [f"  {gap_line(baseline, other)}" for other in results[1:]]
    lines.append(
        "A gap counts as beyond seed noise when it is more than 2 standard errors of the "
        "difference (from the spread over seeds; 3 or more seeds recommended). The test split "
        "only reports: choose settings on validation (chanloss tune)."
    )
    return "\n".join(lines)
