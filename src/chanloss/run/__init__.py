"""One run: a config in, a run directory out.

``train(config, out)`` trains a config into a run directory and returns a ``RunResult``
(``read_result`` reads one back); ``load_run`` rebuilds a run's model and losses from its
checkpoint (``load_for_eval`` with its evaluation batches, as an ``Evaluator``, without an
optimiser); ``Trainer`` is the loop itself; ``load_checkpoint``/``save_checkpoint`` read and write
the checkpoint format. The names are imported on first use, so that importing a submodule does
not import the whole floor.
"""

from __future__ import annotations

from chanloss.core.discovery import lazy_names

_WHERE = {
    "CheckpointError": "chanloss.core.errors",
    "Evaluator": "chanloss.run.evaluator",
    "load_checkpoint": "chanloss.run.checkpoint",
    "save_checkpoint": "chanloss.run.checkpoint",
    "is_main_process": "chanloss.run.distributed",
    "load_for_eval": "chanloss.run.loader",
    "load_run": "chanloss.run.loader",
    "RunResult": "chanloss.run.result",
    "read_result": "chanloss.run.result",
    "Trainer": "chanloss.run.trainer",
    "train": "chanloss.run.session",
}
__all__ = sorted(_WHERE)

__getattr__, __dir__ = lazy_names(__name__, _WHERE)
