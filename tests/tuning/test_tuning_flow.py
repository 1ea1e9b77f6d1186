"""The modules of ``chanloss.tuning`` import one way down (issue 34): the Tuner calls each
module below it and gets values back; no module below imports the Tuner or a module of its own
rank or above, type-hint imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import chanloss.tuning

# a module may import only modules of a lower rank
RANKS = {
    "__init__": 6,
    "tuner": 5,
    "search": 4,
    "confirm": 4,
    "finish": 4,
    "report": 4,
    "study": 3,
    "trials": 2,
    "pruners": 1,
    "output": 1,
    "budget": 1,
    "recommend": 0,
    "stats": 0,
    "storage": 0,
    "common": 0,
}
PACKAGE = Path(chanloss.tuning.__file__).parent


def tuning_imports(path: Path) -> set[str]:
    """The ``chanloss.tuning`` modules that ``path`` imports anywhere (TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["chanloss", "tuning"] and len(parts) > 2 and parts[2] in RANKS:
                found.add(parts[2])
    return found


def test_every_tuning_module_has_a_rank() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == set(RANKS), (
        f"give each new module of chanloss.tuning a rank: {modules ^ set(RANKS)}"
    )


def test_tuning_modules_import_only_lower_ranks() -> None:
    upward = [
        f"{path.stem} (rank {RANKS[path.stem]}) imports {other} (rank {RANKS[other]})"
        for path in sorted(PACKAGE.glob("*.py"))
        for other in sorted(tuning_imports(path))
        if RANKS[other] >= RANKS[path.stem]
    ]
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "confirm.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from chanloss.tuning.tuner import Tuner\nimport chanloss.tuning.finish\n"
    )
    assert tuning_imports(bad) == {"tuner", "finish"}
