"""Registration by discovery: a package imports every one of its modules, so that a loss, model
or data set added as one new file registers itself with no import line to add elsewhere."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable


def import_submodules(package: str, path: Iterable[str]) -> list[str]:
    """Import every module of ``package`` (found on its ``__path__``, ``path``) whose name does
    not start with ``_``; return their full names in the (sorted) order imported.

    Modules named ``_...`` are helpers of the others and are imported only by them.
    """
    names = sorted(info.name for info in pkgutil.iter_modules(list(path)))
    imported = [f"{package}.{name}" for name in names if not name.startswith("_")]
    for module in imported:
        importlib.import_module(module)
    return imported
