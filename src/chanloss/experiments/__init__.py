"""Many runs: the process pool that runs them, ``compare`` (several configs over seeds, a
table and the verdict), the ``--nproc`` launcher and the demo. The names are imported on first
use."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "compare": "chanloss.experiments.comparison",
    "load_labelled": "chanloss.experiments.comparison",
    "results_table": "chanloss.experiments.comparison",
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
