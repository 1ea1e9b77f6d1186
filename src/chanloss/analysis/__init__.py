"""Analysis of trained checkpoints: class separability, CC and MC channel views, t-SNE.

:func:`analyze` (the ``chanloss analyze`` command) rebuilds each run from its checkpoint,
evaluates it on the test split and writes ``report.html``, ``metrics.csv`` and the figures.
The metrics (:func:`distance_ratio`, :func:`silhouette`, :func:`fisher_ratio`) and the views
(:mod:`chanloss.analysis.views`) can be used on their own.
"""

from chanloss.analysis.collect import RunData, collect, load_evaluator, load_trainer
from chanloss.analysis.metrics import distance_ratio, fisher_ratio, separability, silhouette
from chanloss.analysis.report import METRIC_COLUMNS, analyze
from chanloss.analysis.views import (
    channel_groups,
    class_correlation,
    class_means,
    gap_attention,
    group_diversity,
    normalised_group_maps,
)

__all__ = [
    "METRIC_COLUMNS",
    "RunData",
    "analyze",
    "channel_groups",
    "class_correlation",
    "class_means",
    "collect",
    "distance_ratio",
    "fisher_ratio",
    "gap_attention",
    "group_diversity",
    "load_evaluator",
    "load_trainer",
    "normalised_group_maps",
    "separability",
    "silhouette",
]
