"""chanloss: channel-level losses (CC-Loss, MC-Loss) for PyTorch image classifiers.

``chanloss.load_model(path)`` turns a checkpoint into a classifier with its preprocessing
(:mod:`chanloss.inference`); it is imported on first use, so ``import chanloss`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chanloss.inference import load_model

from chanloss.core import messages as _messages

# A worker process of a command (compare/tune --jobs, train --nproc) prints warnings as that
# command does: one line, once per command (see chanloss.core.messages).
_messages.join_command()

__version__ = "0.1.0"
__all__ = ["__version__", "load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from chanloss.inference import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
