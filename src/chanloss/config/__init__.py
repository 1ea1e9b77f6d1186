"""The training configuration: a YAML file validated by a pydantic schema.

The package has three parts, used in this order by :func:`load_config`:

- :mod:`~chanloss.config.yaml_loader`: reading the file and parsing YAML with limits;
- :mod:`~chanloss.config.overrides`: ``--set KEY=VALUE`` overrides, applied to the raw
  YAML before validation, so they are checked exactly like the file;
- :mod:`~chanloss.config.schema` and :mod:`~chanloss.config.sections`: the schema (the
  single reference for every key and its default); unknown keys and values of the wrong type
  are errors that name the dotted key (``optim.lr``, ``losses.1.weight``); a string is never
  silently converted to a number.

Every name is importable from ``chanloss.config`` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chanloss.config.overrides import apply_overrides, parse_overrides
from chanloss.config.schema import (
    MAX_FLOAT32,
    MAX_PIXELS,
    MAX_SEED,
    AugmentConfig,
    DataConfig,
    DistributedConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    config_to_dict,
    dump_config,
    resolved_config_dict,
    validate_config,
)
from chanloss.config.yaml_loader import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    MAX_VALUE_CHARS,
    _Loader,
    read_yaml,
    yaml_load,
)
from chanloss.core.errors import ConfigError, YAMLLimitError

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_FLOAT32",
    "MAX_NODES",
    "MAX_PIXELS",
    "MAX_SEED",
    "MAX_VALUE_CHARS",
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "YAMLLimitError",
    "_Loader",
    "apply_overrides",
    "config_to_dict",
    "dump_config",
    "load_config",
    "parse_overrides",
    "read_yaml",
    "resolved_config_dict",
    "validate_config",
    "yaml_load",
]


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    raw: dict[str, Any] | None = None,
) -> TrainConfig:
    """Load a YAML config file (or a raw mapping), apply ``--set`` overrides and validate."""
    if raw is None:
        if path is None:
            raise ConfigError("no config given")
        raw = read_yaml(path)
    source = str(path) if path is not None else "config"
    if raw is None and not overrides:
        raise ConfigError(
            f"{source} is empty; expected a mapping with the keys model, data, losses "
            "(and optionally optim, schedule, epochs, ...)"
        )
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    parsed = parse_overrides(list(overrides))
    raw = apply_overrides(_copy(raw), parsed)
    given = {key: item.strip() for (key, _), item in zip(parsed, overrides, strict=True)}
    return validate_config(raw, source=source, overrides=given)


def _copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_copy(v) for v in obj]
    return obj
