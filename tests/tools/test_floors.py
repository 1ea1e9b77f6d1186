"""The package is a house with one-way floors (docs/design.md, "How the code is laid out"): a
module imports only from its own floor or the floors below it, and no modules import each other
in a circle; type-hint-only imports and imports inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "chanloss"
# Higher numbers are higher floors; a floor may import its own number or lower.
FLOORS = {
    "core": 0,
    "losses": 1,
    "models": 1,
    "data": 1,
    "config": 2,
    "run": 3,
    "experiments": 4,
    "tuning": 5,
    "pruning": 5,
    "analysis": 5,
    "inference": 5,
    "cli": 6,
    "__main__": 7,
}


def floor_of(module: str) -> str:
    """``chanloss.run.trainer`` -> ``run``; ``chanloss.inference`` -> ``inference``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def upward_imports(package: Path) -> list[str]:
    """Every import (at any depth of a file, TYPE_CHECKING blocks included) of a higher floor."""
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts == ("__init__.py",):
            continue  # the package's own lazy names (load_model) stand above every floor
        here = relative.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                found.append(f"{relative}:{node.lineno} a relative import")
                continue
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
                if modules[0] == "chanloss":
                    modules = [
                        f"chanloss.{a.name}" for a in node.names if not a.name.startswith("__")
                    ]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                if not module.startswith("chanloss."):
                    continue
                there = floor_of(module)
                if there not in FLOORS:
                    found.append(f"{relative}:{node.lineno} {module}: not on any floor")
                elif FLOORS[there] > FLOORS[here]:
                    found.append(f"{relative}:{node.lineno} {here} imports {there}")
    return found


def test_every_top_level_part_of_the_package_is_on_a_floor() -> None:
    parts = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if not p.name.startswith("_")}
    parts |= {"__main__"}
    assert parts - {"py.typed", "__pycache__"} == set(FLOORS)


def test_no_module_imports_a_higher_floor() -> None:
    assert upward_imports(PACKAGE) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("from chanloss.run.trainer import Trainer\n", "losses/bad.py:1 losses imports run"),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from chanloss import cli\n",
            "losses/bad.py:3 losses imports cli",
        ),
        ("def f():\n    import chanloss.tuning.tuner\n", "losses/bad.py:2 losses imports tuning"),
        ("from .other import x\n", "losses/bad.py:1 a relative import"),
    ],
)
def test_the_check_sees_an_upward_import(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "losses").mkdir()
    (tmp_path / "losses" / "bad.py").write_text(text)
    (tmp_path / "losses" / "fine.py").write_text("from chanloss.core.errors import ConfigError\n")
    assert upward_imports(tmp_path) == [expected]


def module_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the chanloss modules it imports (any depth of the file; a package's own
    ``__init__`` imported from inside it is not counted)."""
    root = package.parent
    names = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in names:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of more than one module that reach each other (strongly connected)."""
    reach = {name: set() for name in graph}
    for start in graph:
        todo = list(graph[start])
        while todo:
            node = todo.pop()
            if node not in reach[start]:
                reach[start].add(node)
                todo.extend(graph[node])
    groups = {frozenset([a, *(b for b in reach[a] if a in reach[b])]) for a in graph}
    return sorted(sorted(g) for g in groups if len(g) > 1)


def test_no_import_circle() -> None:
    assert circles(module_graph(PACKAGE)) == []


def test_the_circle_check_sees_a_type_hint_circle(tmp_path: Path) -> None:
    package = tmp_path / "chanloss"
    (package / "run").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "run" / "__init__.py").write_text("")
    (package / "run" / "a.py").write_text("from chanloss.run.b import B\n")
    hint = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from chanloss.run.a import A\n"
    (package / "run" / "b.py").write_text(hint)
    (package / "run" / "c.py").write_text("import chanloss.run.a\n")
    assert circles(module_graph(package)) == [["chanloss.run.a", "chanloss.run.b"]]
