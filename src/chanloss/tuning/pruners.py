"""The pruners of ``chanloss tune``.

The default, ``noise`` (:class:`NoiseMarginPruner`), is what Optuna's pruners lack for small
validation splits: it judges a trial on its smoothed curve (the mean of its last
:data:`~chanloss.tuning.stats.SCORE_EPOCHS` epochs), only after a warm-up of half of the
epochs, and only when it lies below the median of the complete trials at the same epoch by
more than twice the seed noise *at that epoch* (:func:`seed_noise_by_epoch`: the spread of the
smoothed curves of one setting trained on several seeds, the config as written on two; never
less than the noise of the final score, the study's ``noise_std``). With a high learning rate a
curve can sit 10 points or more below its seed twin half-way and end level with it: the noise of the
final score alone would prune such trials. Until the noise is known, it prunes nothing. ``median``,
``halving`` and ``none`` are Optuna's ``MedianPruner`` (same warm-up), asynchronous successive
halving and ``NopPruner``.
"""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

import optuna

from chanloss.config import ConfigError
from chanloss.tuning.stats import SCORE_EPOCHS, curve_score, pooled_seed_std, stuck_flags

__all__ = [
    "NOISE_FLOOR",
    "PRUNERS",
    "NoiseMarginPruner",
    "make_pruner",
    "seed_noise_by_epoch",
    "warmup_epochs",
]

PRUNERS = ("noise", "median", "halving", "none")
NOISE_FLOOR = 0.005  # the margin never drops below 2 x half a point, however lucky the seeds
_MARGIN = 2.0  # a trial is pruned when this many noise std below the reference


def warmup_epochs(epochs: int) -> int:
    """The epochs that are never pruned: the first half (a trial is judged from epoch
    ``epochs // 2 + 1`` on)."""
    return max(1, epochs // 2)


def _smoothed_at(values: dict[int, float], step: int, last: int) -> float | None:
    steps = sorted(s for s in values if s <= step)
    if not steps or steps[-1] != step:
        return None
    return curve_score([values[s] for s in steps], last)


def seed_noise_by_epoch(trials: list[Any], last: int = SCORE_EPOCHS) -> dict[int, float]:
    """The seed noise of the smoothed validation curve at every epoch, from complete trials of
    the same setting (params) on different seeds (``user_attrs["seed"]``; trials without one
    are left out): the pooled within-setting standard deviation of the running mean of
    ``last`` epochs, made non-increasing in the epoch (the noise at epoch e is the largest
    measured at e or later), so that one epoch where two seeds happen to agree does not
    declare the curves settled. Stuck runs (:func:`~chanloss.tuning.stats.stuck_flags` of
    the final scores) are left out. Empty when no setting has two seeds."""
    by_setting: dict[str, dict[int, Any]] = {}
    for t in trials:
        seed = t.user_attrs.get("seed")
        if seed is None:
            continue
        key = json.dumps(t.params, sort_keys=True)  # as seed_groups keys a setting
        by_setting.setdefault(key, {})[int(seed)] = t
    groups = []
    for seeds in by_setting.values():  # stuck runs left out, as from the final score's noise
        runs = list(seeds.values())
        flags = stuck_flags([t.value for t in runs])
        kept = [t.intermediate_values for t, stuck in zip(runs, flags, strict=True) if not stuck]
        if len(kept) > 1:
            groups.append(kept)
    steps = sorted({s for g in groups for curve in g for s in curve})
    raw: dict[int, float] = {}
    for step in steps:
        values = [[v for c in g if (v := _smoothed_at(c, step, last)) is not None] for g in groups]
        std, dof = pooled_seed_std(values)
        if dof:
            raw[step] = std
    envelope, running = {}, 0.0
    for step in sorted(raw, reverse=True):
        running = max(running, raw[step])
        envelope[step] = running
    return dict(sorted(envelope.items()))


class NoiseMarginPruner(optuna.pruners.BasePruner):
    """Prune a trial whose smoothed validation curve lies below the median of the complete
    trials' at the same epoch by more than ``margin`` x the seed noise at that epoch
    (:func:`seed_noise_by_epoch`, at least the study's ``noise_std`` of the final score).

    ``warmup``: epochs (steps) never pruned; ``startup``: complete trials needed at that epoch
    before anything is pruned; ``last``: epochs averaged into the smoothed value.
    """

    def __init__(self, warmup: int, startup: int = 3, last: int = SCORE_EPOCHS,
                 margin: float = _MARGIN) -> None:  # fmt: skip
        self.warmup, self.startup, self.last, self.margin = warmup, startup, last, margin

    def prune(self, study: Any, trial: Any) -> bool:
        from optuna.trial import TrialState

        step = trial.last_step
        if step is None or step <= self.warmup:
            return False
        noise = study.user_attrs.get("noise_std")
        if not isinstance(noise, (int, float)) or not math.isfinite(noise):
            return False
        mine = _smoothed_at(trial.intermediate_values, step, self.last)
        if mine is None:
            return False
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        others = [
            v
            for t in complete
            if (v := _smoothed_at(t.intermediate_values, step, self.last)) is not None
        ]
        if len(others) < self.startup:
            return False
        noise = max(noise, seed_noise_by_epoch(complete, self.last).get(step, 0.0), NOISE_FLOOR)
        return mine < statistics.median(others) - self.margin * noise


def make_pruner(kind: str, epochs: int) -> Any:
    """The pruner named ``kind`` (see the module docstring) for trials of ``epochs`` epochs."""
    if kind == "noise":
        return NoiseMarginPruner(warmup=warmup_epochs(epochs))
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup_epochs(epochs))
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner: expected one of {', '.join(PRUNERS)}, got {kind!r}")
