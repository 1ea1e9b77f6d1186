"""Many runs: the one process pool that runs them (``pool``), ``compare`` (several configs over
seeds, a table and the verdict), the one verdict rule (``verdict``), the ``--nproc`` launcher
and the demo. The names are imported on first use."""

from __future__ import annotations

from chanloss.core.discovery import lazy_names

_WHERE = {
    "ConfigResult": "chanloss.experiments.results",
    "KeepDiverged": "chanloss.experiments.runner",
    "compare": "chanloss.experiments.comparison",
    "load_labelled": "chanloss.experiments.comparison",
    "results_table": "chanloss.experiments.comparison",
    "executor_for": "chanloss.experiments.pool",
    "gap": "chanloss.experiments.verdict",
    "run_many": "chanloss.experiments.runner",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_names(__name__, _WHERE)
