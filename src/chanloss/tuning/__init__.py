"""``chanloss tune``: search the loss (and optimiser) settings on the validation split with Optuna.

Every trial is a training run of the config with sampled settings (TPE sampler), scored on
the VALIDATION split; a pruner fed the per-epoch validation accuracy stops poor trials early.
The test split is never read during the search (trials train with ``evaluate_test=False``).
The search space is the losses' declared spaces narrowed or extended by the config's
``search:`` block (:mod:`chanloss.config.search`).

Modules: :mod:`~chanloss.tuning.storage` (where a study lives and what it is of),
:mod:`~chanloss.tuning.pruners`, :mod:`~chanloss.tuning.trials` (one training run, in this
process or a worker), :mod:`~chanloss.tuning.stats` (the verdicts' statistics),
:mod:`~chanloss.tuning.tuner` (one invocation), :mod:`~chanloss.tuning.budget` (the ETA, a
short budget), :mod:`~chanloss.tuning.confirm` (choosing the winner, the confirmation, stuck
fold runs rerun), :mod:`~chanloss.tuning.recommend` (the verdict's five answers),
:mod:`~chanloss.tuning.finish` (after the search: best.yaml, ce.yaml, tune.json),
:mod:`~chanloss.tuning.output` (table, advice, trials.csv) and
:mod:`~chanloss.tuning.report` (report.html). ``tuning`` uses ``training``,
never the reverse.
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
