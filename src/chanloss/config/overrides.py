"""``--set KEY=VALUE`` overrides: parsed as YAML values and applied to the raw config before
validation, so that they are checked exactly like the file."""

from __future__ import annotations

from typing import Any

import yaml

from chanloss.config.yaml_loader import MAX_DEPTH, MAX_VALUE_CHARS, yaml_load
from chanloss.core.errors import ConfigError, YAMLLimitError

__all__ = ["apply_overrides", "parse_overrides"]


def parse_overrides(items: list[str] | tuple[str, ...]) -> list[tuple[str, Any]]:
    """Parse ``KEY=VALUE`` strings; the value is YAML (``0.05``, ``true``, ``[1, 2]``, ``null``)."""
    parsed = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set expects KEY=VALUE with a dotted KEY, got {_clip(item)!r}")
        if len(key.split(".")) > MAX_DEPTH:
            raise ConfigError(f"--set {_clip(key)}: more than {MAX_DEPTH} dotted parts")
        if len(text) > MAX_VALUE_CHARS:
            raise ConfigError(
                f"--set {_clip(key)}: the value has {len(text):,} characters, expected at most "
                f"{MAX_VALUE_CHARS:,}"
            )
        try:
            value = yaml_load(text) if text.strip() else ""
        except YAMLLimitError as err:
            raise ConfigError(f"--set {_clip(key)}: the value is {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(
                f"--set {key}: the value {_clip(text)!r} is not valid YAML ({err})"
            ) from None
        parsed.append((key, value))
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """Set dotted keys in a raw config (in place, and returned).

    Numeric parts index lists (``losses.1.weight``); the index one past the end appends a new
    entry. Missing mappings on the way are created.
    """
    for key, value in overrides:
        parts = key.split(".")
        node: Any = raw
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[:depth]) or "the config"
            if isinstance(node, list):
                if not part.isdigit():
                    raise ConfigError(
                        f"--set {key}: {where} is a list, expected an index, got {part!r}"
                    )
                index = int(part)
                if index > len(node):
                    raise ConfigError(
                        f"--set {key}: index {index} is out of range for {where} "
                        f"(it has {len(node)} entries; {len(node)} appends one)"
                    )
                if index == len(node):
                    node.append({} if not last else value)
                if last:
                    node[index] = value
                else:
                    if node[index] is None:
                        node[index] = {}
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(
                    f"--set {key}: {where} is a {type(node).__name__}, not a mapping or a list"
                )
    return raw


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
