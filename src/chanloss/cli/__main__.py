"""``python -m chanloss.cli``: the same command line as ``chanloss`` and ``python -m chanloss``."""

from chanloss.cli import entry

entry()
