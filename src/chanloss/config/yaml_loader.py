"""Reading config YAML safely: a size-limited file reader and a parser with limits.

:func:`yaml_load` parses YAML text with ``yaml.safe_load`` semantics (plus ``1e-4`` read as a
float, as YAML 1.2 does) and refuses documents over the limits below (:class:`YAMLLimitError`);
:func:`read_yaml` reads a config file, every failure a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from chanloss.core.errors import ConfigError, YAMLLimitError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "MAX_VALUE_CHARS",
    "read_yaml",
    "yaml_load",
]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 does."""


_Loader.yaml_implicit_resolvers = {
    k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _first, _resolvers in _Loader.yaml_implicit_resolvers.items():
    _Loader.yaml_implicit_resolvers[_first] = [
        (tag, rx) for tag, rx in _resolvers if tag != "tag:yaml.org,2002:float"
    ]
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# Bounds on what a config text (file or --set value) may hold: far above any real config, far below
# what exhausts memory or the interpreter's stack.
MAX_CONFIG_BYTES = 1 << 20  # a config file
MAX_VALUE_CHARS = 1 << 16  # one --set value
MAX_DEPTH = 32  # nesting of mappings and lists (a --set key's dotted parts too)
MAX_NODES = 100_000  # scalars, mappings and lists, with every alias expanded


def _check_limits(root: yaml.Node | None) -> None:
    """Raise :class:`YAMLLimitError` if the composed YAML, with every alias expanded, has more
    than :data:`MAX_NODES` nodes, is nested deeper than :data:`MAX_DEPTH` or refers to itself.

    Aliases make a graph of shared nodes: each node's expanded size and depth is computed once
    (memoised), so a "billion laughs" document costs as much to check as it has nodes.
    """
    if root is None:
        return
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded nodes, depth)
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        if expanded:
            size = 1 + sum(done[id(c)][0] for c in children)
            depth = 1 + max((done[id(c)][1] for c in children), default=0)
            active.discard(key)
            done[key] = (size, depth)
            if size > MAX_NODES:
                raise YAMLLimitError(
                    f"more than {MAX_NODES:,} values once its aliases (*name) are expanded; "
                    "expected a small config"
                )
            if depth > MAX_DEPTH:
                raise YAMLLimitError(f"nested deeper than {MAX_DEPTH} levels")
            continue
        if key in done:
            continue
        if key in active:
            raise YAMLLimitError("an alias (*name) refers to a mapping or list that contains it")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in done)
        if len(active) > MAX_DEPTH + 1:
            raise YAMLLimitError(f"nested deeper than {MAX_DEPTH} levels")


def _bracket_depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in ``text`` (quotes ignored: an upper bound)."""
    if text.count("[") + text.count("{") <= 4 * MAX_DEPTH:
        return 0
    depth = peak = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            peak = max(peak, depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return peak


def yaml_load(text: str) -> Any:
    """Parse YAML text safely (``yaml.safe_load`` semantics, plus ``1e-4`` read as a float).

    Documents bigger than :data:`MAX_NODES` values (aliases expanded), nested deeper than
    :data:`MAX_DEPTH` or referring to themselves raise :class:`YAMLLimitError`.
    """
    if _bracket_depth(text) > 4 * MAX_DEPTH:  # PyYAML's scanner is quadratic in this depth
        raise YAMLLimitError(f"nested deeper than {MAX_DEPTH} levels")
    loader = _Loader(text)  # noqa: S506 - _Loader derives from SafeLoader
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YAMLLimitError(f"nested deeper than {MAX_DEPTH} levels") from None
        _check_limits(node)
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file; a missing or unparsable file is a :class:`ConfigError`."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory, expected a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config file {path} has {size:,} bytes, expected a YAML config of at most "
                f"{MAX_CONFIG_BYTES:,}"
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file; expected a YAML config") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    try:
        return yaml_load(text)
    except YAMLLimitError as err:
        raise ConfigError(f"{path}: refused: the YAML is {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}{_where(err)}: invalid YAML: {_problem(err)}") from None


def _where(err: yaml.YAMLError) -> str:
    """``, line 3, column 7`` of a parse error (1-based), or nothing when PyYAML gives none."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    return "" if mark is None else f", line {mark.line + 1}, column {mark.column + 1}"


def _problem(err: yaml.YAMLError) -> str:
    """What PyYAML found wrong, without its ``in "<unicode string>"`` position lines."""
    context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and start is not None and start is not getattr(err, "problem_mark", None):
        context = f"{context} (from line {start.line + 1}, column {start.column + 1})"
    parts = [context, getattr(err, "problem", None)]
    text = "; ".join(str(p) for p in parts if p) or str(err).splitlines()[0]
    note = getattr(err, "note", None)
    hint = " (a tab indents the line: YAML indents with spaces)" if "\\t" in text else ""
    return " ".join(text.split()) + (f" ({note})" if note else "") + hint
