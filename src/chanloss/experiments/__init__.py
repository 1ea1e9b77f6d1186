"""Many runs: the one process pool that runs them (``pool``), ``compare`` (several configs over
seeds, a table and the verdict), the one verdict rule (``verdict``), the ``--nproc`` launcher
and the demo. The names are imported on first use."""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
