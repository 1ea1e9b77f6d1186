"""``python -m chanloss``: the command line of :mod:`chanloss.cli`."""

from chanloss.cli import entry

entry()
