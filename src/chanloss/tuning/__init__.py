"""``chanloss tune``: search the loss (and optimiser) settings on the validation split with Optuna.

Every trial is a training run of the config with sampled settings (TPE sampler), scored on
the VALIDATION split; a pruner fed the per-epoch validation accuracy stops poor trials early.
The test split is never read during the search (trials train with ``evaluate_test=False``).
The search space is the losses' declared spaces narrowed or extended by the config's
``search:`` block (:mod:`chanloss.config.search`).

Modules, one way down: :mod:`~chanloss.tuning.tuner` (one invocation: the :class:`Tuner`
calls each module below and gets values back) -> :mod:`~chanloss.tuning.search` (the search
loop), :mod:`~chanloss.tuning.confirm` (the :class:`~chanloss.tuning.confirm.Confirmation`:
choosing the winner, the confirmation against CE alone, stuck fold runs rerun, the verdict),
:mod:`~chanloss.tuning.finish` (best.yaml, ce.yaml, what tune.json holds) and
:mod:`~chanloss.tuning.report` (report.html) -> :mod:`~chanloss.tuning.study` (opening a
study, what the search left in it, the seed noise kept in it) ->
:mod:`~chanloss.tuning.output` (table, advice, trials.csv), :mod:`~chanloss.tuning.budget`
(the ETA, a short budget), :mod:`~chanloss.tuning.trials` (one training run, in this
process or a worker), :mod:`~chanloss.tuning.pruners` -> :mod:`~chanloss.tuning.recommend`
(the verdict's five answers), :mod:`~chanloss.tuning.stats` (the verdicts' statistics),
:mod:`~chanloss.tuning.storage` (where a study lives and what it is of) and
:mod:`~chanloss.tuning.common` (the plain values they pass: the recipe, the search's facts).
``tuning`` uses ``experiments`` and ``run``, never the reverse.
"""

from chanloss.tuning.common import parse_duration
from chanloss.tuning.output import advice, confirmation_table
from chanloss.tuning.stats import gain_over
from chanloss.tuning.storage import STUDY_NAME, open_storage
from chanloss.tuning.trials import confirm_runs, run_confirm
from chanloss.tuning.tuner import TuneInterrupted, Tuner, tune

__all__ = [
    "STUDY_NAME",
    "TuneInterrupted",
    "Tuner",
    "advice",
    "confirm_runs",
    "confirmation_table",
    "gain_over",
    "open_storage",
    "parse_duration",
    "run_confirm",
    "tune",
]
