"""Informational notes and warnings, each printed once per command.

A command (``chanloss train``, ``compare``, ``tune``, ...) may build the same data set or loss
many times: once per run, per trial, per worker process. A note that reads the same every time
(``image_folder: image_size auto -> 32x32 ...``) or a warning with the same text (CC-Loss's
``min_hidden``) is printed the first time only. Python warnings are printed as one line,
``chanloss: warning: <text>``, without the source line that :mod:`warnings` adds by default.

API
---
``once(text, key=None, file=None) -> bool``
    Print ``text`` (to stdout, or ``file``) unless a message with the same key was printed
    earlier in this command; the key is ``text`` itself unless given (give one when the text
    varies but should still appear once, e.g. it names a trial). Returns whether it printed.
``command_scope()``
    The context manager the CLI wraps around one command. Inside it, :func:`once` remembers
    what was printed and :mod:`warnings` prints through :func:`format_warning` and
    :func:`once`. Outside any scope (plain library use) :func:`once` prints every time and
    warnings are left to Python.
``format_warning(message, category, filename, lineno, line=None) -> str``
    The one-line form, usable as ``warnings.formatwarning``.

Worker processes
----------------
``compare --jobs`` and ``tune --jobs`` train in spawned worker processes, and ``train --nproc``
in torchrun processes; they must not each print the note again. The scope therefore keeps the
keys already printed as empty files in a temporary folder named by the environment variable
``CHANLOSS_MESSAGES_DIR``, which child processes inherit. :func:`once` claims a key by creating
its file with ``O_CREAT | O_EXCL``, so of several processes exactly one prints it, whichever is
first, and no parent has to collect anything from its workers. ``import chanloss`` in a child
(which unpickling a worker's function does) calls :func:`join_command`, which installs the
one-line warning format there too. The folder is removed when the outermost scope ends; an
inner scope (a command run inside another, or a child process) reuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

ENV = "CHANLOSS_MESSAGES_DIR"
PROG = "chanloss"


def format_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """One line, ``chanloss: warning: <text>``: no file, line number or source line (they name
    library internals, not what the user should change). Whitespace runs become one space."""
    text = " ".join(str(message).split())
    kind = "" if category in (UserWarning, RuntimeWarning) else f"{category.__name__}: "
    return f"{PROG}: warning: {kind}{text}\n"


def _seen_dir() -> str | None:
    path = os.environ.get(ENV)
    return path if path and os.path.isdir(path) else None


def _claim(key: str) -> bool:
    """True for the first claim of ``key`` in this command (in any of its processes); always
    True outside a command scope."""
    folder = _seen_dir()
    if folder is None:
        return True
    name = hashlib.sha1(key.encode("utf-8", "replace")).hexdigest()
    try:
        fd = os.open(os.path.join(folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    except OSError:  # an unwritable folder: printing twice beats printing nothing
        return True
    os.close(fd)
    return True


def once(text: str, key: str | None = None, file: TextIO | None = None) -> bool:
    """Print ``text`` unless the same ``key`` (default: ``text``) was printed earlier in this
    command, by this process or another of the command's processes. Returns whether it
    printed."""
    if not _claim(text if key is None else key):
        return False
    print(text, file=sys.stdout if file is None else file, flush=True)
    return True


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    text = format_warning(message, category, filename, lineno, line)
    if _claim("warning: " + text):
        stream = sys.stderr if file is None else file
        with contextlib.suppress(OSError, ValueError):  # a closed stream, as Python does
            stream.write(text)
            stream.flush()


def _install_warning_format() -> tuple[Any, Any]:
    saved = (warnings.showwarning, warnings.formatwarning)
    warnings.showwarning = _show_warning
    warnings.formatwarning = format_warning
    return saved


def join_command() -> None:
    """In a process started by a command (the environment names its folder): print warnings
    in the one-line form, once per command. Elsewhere: nothing."""
    if _seen_dir() is not None and warnings.showwarning is not _show_warning:
        _install_warning_format()


@contextlib.contextmanager
def command_scope() -> Iterator[None]:
    """Within the block, :func:`once` and warnings print each message once for the whole
    command, its worker processes included; see the module docstring."""
    outer = _seen_dir() is None
    previous = os.environ.get(ENV)
    folder = tempfile.mkdtemp(prefix="chanloss-messages-") if outer else None
    if folder is not None:
        os.environ[ENV] = folder
    saved = _install_warning_format()
    try:
        yield
    finally:
        warnings.showwarning, warnings.formatwarning = saved
        if folder is not None:
            if previous is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = previous
            shutil.rmtree(folder, ignore_errors=True)
