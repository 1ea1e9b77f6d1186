"""A quiet terminal for ``chanloss tune``: what a training run prints or warns is collected
(in the process that trains, a worker included) and the tuner prints each distinct line once
per command, however many trials repeat it (the image-size line of an image folder, CC-Loss's
``min_hidden`` warning)."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator

__all__ = ["OncePerCommand", "collected"]


@contextlib.contextmanager
def collected(into: list[str]) -> Iterator[None]:
    """Collect the lines printed to stdout and the warnings raised inside the block into
    ``into`` (a warning as one line, ``Category: message``, without its source line)."""
    buffer = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(buffer):
        warnings.simplefilter("always")
        try:
            yield
        finally:
            into.extend(line for line in buffer.getvalue().splitlines() if line.strip())
            into.extend(
                f"{w.category.__name__}: {' '.join(str(w.message).split())}" for w in caught
            )


class OncePerCommand:
    """Prints each distinct message once (through ``log``), in the order first seen."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.seen: set[str] = set()

    def __call__(self, messages: list[str]) -> None:
        for message in messages:
            if message not in self.seen:
                self.seen.add(message)
                self.log(message)
