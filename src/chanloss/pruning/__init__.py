"""Channel pruning of trained runs: CPLI and the standard criteria (``chanloss prune``).

One prune is plan (:mod:`chanloss.pruning.plan`: every check, the calibration images and the
keep counts; nothing written) -> prune (:mod:`chanloss.pruning.choose`) -> one trainer to
fine-tune (:mod:`chanloss.pruning.finetune`), run by :func:`prune_checkpoint`. Uses the run
floor (to load a run, fine-tune it); the run floor never imports this package. The loaders
re-apply a pruned checkpoint's structure with :mod:`chanloss.models.pruned`.
"""

from chanloss.pruning.graph import PruneError
from chanloss.pruning.run import METHODS, prune_checkpoint

__all__ = ["METHODS", "PruneError", "prune_checkpoint"]
