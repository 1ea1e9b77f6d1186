"""What a comparison shows: each config's test-accuracy gap to a baseline, and whether it is
beyond the noise of the seeds. Used by ``chanloss compare`` (the baseline is the first config)
and ``chanloss demo`` (CE).

The rule: a gap of the mean test accuracies is *beyond seed noise* when it is larger than two
standard errors of the difference, ``2 * sqrt(s_a**2 / n_a + s_b**2 / n_b)`` with ``s`` the
sample standard deviation over the ``n`` seeds of each config (Welch's standard error, which
does not assume equal spreads). With one seed per config there is no spread, so no verdict.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chanloss.experiments.comparison import ConfigResult

__all__ = ["compare_verdict", "gap_line"]


def gap_line(baseline: ConfigResult, other: ConfigResult, name: str | None = None) -> str:
    """``mc - ce: +2.10 test-accuracy points after 9 epochs, more than 2 standard errors
    (0.80 points): beyond seed noise.``"""
    gap = 100 * (other.mean - baseline.mean)
    n_base, n_other = len(baseline.test_acc), len(other.test_acc)
    if min(n_base, n_other) < 2:
        how = "one seed each, so no error bar"
    else:
        se = 100 * math.sqrt(baseline.std**2 / n_base + other.std**2 / n_other)
        if abs(gap) > 2 * se:
            how = f"more than 2 standard errors ({2 * se:.2f} points): beyond seed noise"
        else:
            how = f"within 2 standard errors ({2 * se:.2f} points): not a reliable difference"
    epochs = other.config.epochs
    label = name or f"{other.label} - {baseline.label}"
    return (
        f"{label}: {gap:+.2f} test-accuracy points after {epochs} epoch"
        f"{'s' if epochs != 1 else ''}, {how}."
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
