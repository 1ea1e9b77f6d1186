"""Secrets kept out of what chanloss prints or stores: the password of a database URL.

``chanloss tune --storage postgresql://user:PASSWORD@host/db`` connects with the password, but
every line, file and error message that shows the storage shows ``postgresql://user:***@host/db``:
:func:`mask_secrets` masks the passwords of any text that may quote a URL or a libpq
``password=...`` setting (a log line, an error message, a traceback, a command to rerun).

A password need not be on the command line at all: with ``postgresql://user@host/db`` the
PostgreSQL client library (libpq, under psycopg) reads it from ``PGPASSWORD`` or
``~/.pgpass``, as ``psql`` does.

Imports nothing of the package (a core module).
"""

from __future__ import annotations

import re

__all__ = ["MASK", "mask_secrets"]

MASK = "***"

# scheme://user:PASSWORD@host: the password runs to the last "@" before the host (an "@"
# that should have been percent-encoded stays inside it); the host part holds no "/?#"
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*:)([^/?#\s]+)(@)")
# password=... in a URL query (?password=...&) or a libpq connection string (password=... )
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('[^']*'|[^&\s'\"]+)", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """``text`` with every URL password (``scheme://user:PASSWORD@``) and every
    ``password=VALUE`` replaced by ``***``."""
    text = _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)
    return _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + MASK, text)
