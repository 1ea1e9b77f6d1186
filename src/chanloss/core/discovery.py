"""Registration by discovery: a package imports every one of its modules, so that a loss, model
or data set added as one new file registers itself with no import line to add elsewhere."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import Any


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


def lazy_names(
    package: str, where: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562) that import each public name from
    its module (``where``: name -> module) on first use, so that importing the package (or one
    of its modules) does not import the whole floor."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    def __dir__() -> list[str]:
        return sorted({*vars(importlib.import_module(package)), *where})

    return __getattr__, __dir__
