"""The verdict of ``chanloss tune``'s confirmation and the config it recommends.

Five answers, decided on the validation runs only (the test split is information):

* ``gain``: the tuned setting beats CE alone beyond noise: use ``best.yaml``.
* ``worse``: CE alone is better beyond noise: use ``ce.yaml``.
* ``no difference``: within noise, *and* the confirmation would have found a useful gain
  (its smallest detectable gain G is at most :func:`useful_gain`): CE alone is as good.
* ``cannot tell``: within noise but G is larger than a useful gain (a gain smaller than G
  would be missed), or no verdict at all (one run per arm, fewer than 3 folds).
* ``unstable``: stuck runs kept appearing in the confirmation (:func:`unstable_at` of its
  runs, reruns included): training is unstable at this recipe; neither gain nor no gain.

A useful gain is ``max(2 points, 2 x the seed noise of one run)``: smaller gains are within
what a single training run of either setting varies by, and a gain under 2 points is below
what this project calls worth a second loss. Without a shown gain (every answer but
``gain``), the command recommends ``ce.yaml`` (the config with cross-entropy alone) and
``best.yaml``'s header says that it was not shown to help.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ANSWERS", "USEFUL_GAIN", "decide", "unstable_at", "useful_gain"]

ANSWERS = ("gain", "worse", "no difference", "cannot tell", "unstable")
USEFUL_GAIN = 0.02  # 2 points: the smallest gain worth a second loss


def useful_gain(noise: float | None) -> float:
    """The smallest gain a user would call useful: 2 points, or twice the seed noise of one
    run's score where that is larger."""
    if noise is None or not math.isfinite(noise):
        return USEFUL_GAIN
    return max(USEFUL_GAIN, 2 * noise)


def unstable_at(runs: int) -> int:
    """Stuck runs among ``runs`` confirmation runs from which training counts as unstable:
    2 in 10 (at least 2)."""
    return max(2, math.ceil(runs / 5))


def decide(
    gain: dict[str, Any], *, noise: float | None = None, stuck: int = 0, runs: int = 0
) -> dict[str, Any]:
    """The verdict of a confirmation's validation ``gain`` (:func:`paired_fold_test` or
    :func:`gain_over`): ``answer`` (one of :data:`ANSWERS`), ``use`` (``best.yaml`` or
    ``ce.yaml``), ``useful`` (the useful gain), ``text`` (one sentence for the terminal and
    the report). ``stuck`` of ``runs`` confirmation runs were flagged stuck."""
    useful = useful_gain(noise)
    out: dict[str, Any] = {"useful": useful, "stuck": stuck, "runs": runs, "use": "ce.yaml"}
    detectable = gain.get("detectable", math.nan)
    if runs and stuck >= unstable_at(runs):
        measured = f"{100 * gain['diff']:+.2f} points" if math.isfinite(gain["diff"]) else "-"
        text = (
            f"unstable: training is unstable at this recipe: {stuck} of {runs} confirmation runs "
            f"got stuck far below their siblings, so neither a gain nor its absence is shown "
            f"(the gain measured anyway: {measured}); try a lower learning rate (optim.lr), a "
            "warm-up (schedule.warmup_epochs) or more epochs, then tune again; use ce.yaml"
        )
        return {**out, "answer": "unstable", "text": text}
    if gain["beyond"] is None:
        why = gain.get("reason", "no noise estimate")
        text = (
            f"cannot tell: {why}, so there is no verdict; rerun with --folds 5 (or "
            "--confirm-seeds 3) before trusting the gain; use ce.yaml"
        )
        return {**out, "answer": "cannot tell", "text": text}
    if gain["beyond"] and gain["diff"] > 0:
        text = "gain: the tuned setting beats CE alone on validation beyond noise: use best.yaml"
        return {**out, "answer": "gain", "use": "best.yaml", "text": text}
    if gain["beyond"]:
        text = (
            "worse: CE alone is better on validation beyond noise: keep CE (use ce.yaml, not "
            "best.yaml)"
        )
        return {**out, "answer": "worse", "text": text}
    if math.isfinite(detectable) and detectable <= useful:
        text = (
            f"no difference: within noise, and this confirmation finds a gain of "
            f"{100 * detectable:.1f} points or more 8 times in 10 (a useful gain is "
            f"{100 * useful:.1f}: 2 points or twice the seed noise): the tuned losses are not "
            "shown to help; CE alone is as good: use ce.yaml"
        )
        return {**out, "answer": "no difference", "text": text}
    size = f"{100 * detectable:.1f} points" if math.isfinite(detectable) else "any size"
    text = (
        f"cannot tell: within noise, but a gain smaller than {size} would be missed (a useful "
        f"gain is {100 * useful:.1f}: 2 points or twice the seed noise); the tuned losses are "
        "not shown to help, nor shown useless; use ce.yaml, or confirm with more data, more "
        "--folds or a longer --timeout"
    )
    return {**out, "answer": "cannot tell", "text": text}
