"""Channel pruning of trained runs: CPLI and the standard criteria (``chanloss prune``).

Uses training (to load a run, fine-tune it); training never imports this package. The
loaders re-apply a pruned checkpoint's structure with :mod:`chanloss.models.pruned`.
"""

from chanloss.pruning.graph import PruneError
from chanloss.pruning.run import METHODS, prune_checkpoint

__all__ = ["METHODS", "PruneError", "prune_checkpoint"]
