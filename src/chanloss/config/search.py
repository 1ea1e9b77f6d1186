"""The search space of ``chanloss tune``: the losses' declared spaces plus the config's ``search:``.

Every loss class declares what may be tuned (``search_space``, see
:mod:`chanloss.losses.search`). A config's ``search:`` block narrows or overrides those
declarations and may add optimiser keys::

    search:
      mc:
        alpha: [0.01, 10]        # a range; log-uniform because MC's default range is
        keep_ratio: [0.5, 1.0]   # choices, because MC's default is a choice
        pool: null               # not tuned: the config's value is kept
      cc:
        weight: {low: 0.01, high: 1, log: true}
        form: {choices: [margin, ratio]}
      optim:
        lr: [0.01, 0.2]          # log-uniform
        weight_decay: [1e-5, 1e-3]

A top-level key names a loss of the config (or ``optim``); a parameter is a key of that loss's
config entry (a constructor parameter, ``weight`` or ``lr``). A value is a ``[low, high]``
range (the distribution of the loss's default range, else log-uniform for ``weight``, ``lr``
and ``weight_decay``, integer for two integers, uniform otherwise), a list of choices (for a
parameter whose default is a choice, or a list that is not two numbers), an explicit mapping
(``{low, high, log}``, ``{low, high, int: true}``, ``{choices: [...]}``), ``null`` (not tuned)
or a single value (fixed at that value, not tuned). The result is a flat mapping from Optuna
parameter names (``mc.alpha``, ``optim.lr``) to :class:`Dimension` (see :func:`resolve_space`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

from chanloss.core.validation import did_you_mean
from chanloss.losses.search import Choice, IntRange, LogUniform, SearchParam, Uniform, describe

__all__ = [
    "OPTIM_SPACE",
    "Dimension",
    "apply_params",
    "default_space",
    "low_end_params",
    "resolve_space",
    "start_params",
]

#: The optimiser keys a ``search:`` block may add, with the distribution a ``[low, high]``
#: range gets (none is searched unless the block names it).
OPTIM_SPACE: dict[str, type] = {"lr": LogUniform, "weight_decay": LogUniform, "momentum": Uniform}

_NOT_SEARCHED = ("check_finite",)  # a loss parameter that is a check, not a setting
_LOG_KEYS = ("weight", "lr", "weight_decay")


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: its Optuna name, where it goes in the config, its range."""

    name: str  # "mc.alpha", "optim.lr"
    path: tuple[str | int, ...]  # ("losses", 1, "alpha"), ("optim", "lr")
    param: SearchParam

    def describe(self) -> str:
        """``mc.alpha: log-uniform [0.001, 10]``."""
        return f"{self.name}: {describe(self.param)}"


def default_space(loss_class: type) -> dict[str, SearchParam]:
    """A loss class's declared search space (empty when it declares none; a registered loss's
    spec holds the same, :attr:`chanloss.losses.LossSpec.search_space`)."""
    return dict(getattr(loss_class, "search_space", None) or {})


def _loss_keys(name: str) -> list[str]:
    """The keys of loss ``name`` a ``search:`` block may name (from its spec)."""
    from chanloss.losses import loss_spec

    return [k for k in loss_spec(name).settable if k not in _NOT_SEARCHED]


def _hint(key: str, options: list[str]) -> str:
    return did_you_mean(key, options)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _range(where: str, low: Any, high: Any, kind: type) -> SearchParam:
    if not (_number(low) and _number(high)):
        raise ValueError(
            f"{where}: a range needs two finite numbers [low, high], got {[low, high]}"
        )
    if low >= high:
        raise ValueError(
            f"{where}: empty range [{low}, {high}]; expected low < high (write a single value "
            "to fix the parameter)"
        )
    if kind is LogUniform:
        if low <= 0:
            raise ValueError(f"{where}: a log-uniform range needs low > 0, got [{low}, {high}]")
        return LogUniform(float(low), float(high))
    if kind is IntRange:
        if not (isinstance(low, int) and isinstance(high, int)):
            raise ValueError(f"{where}: an integer range needs two integers, got [{low}, {high}]")
        return IntRange(low, high)
    return Uniform(float(low), float(high))


def _choices(where: str, values: Any) -> Choice:
    if not isinstance(values, list) or not values:
        raise ValueError(f"{where}: empty choices; expected a non-empty list of values")
    for v in values:
        if not (v is None or isinstance(v, (bool, int, float, str))):
            raise ValueError(
                f"{where}: a choice must be a number, string, boolean or null, got {v!r}"
            )
    if len({repr(v) for v in values}) < len(values):
        raise ValueError(f"{where}: the choices {values} repeat a value")
    return Choice(tuple(values))


def _parse(where: str, key: str, value: Any, default: SearchParam | None) -> SearchParam | None:
    """A ``search:`` entry as a distribution, or None (not tuned); a single value is handled by
    the caller."""
    if isinstance(value, dict):
        allowed = ("low", "high", "log", "int", "choices")
        for k in value:
            if k not in allowed:
                raise ValueError(
                    f"{where}: unknown key {k!r}{_hint(str(k), list(allowed))}; expected "
                    "{low, high[, log: true | int: true]} or {choices: [...]}"
                )
        if "choices" in value:
            if len(value) > 1:
                raise ValueError(f"{where}: choices cannot be combined with low/high/log/int")
            return _choices(where, value["choices"])
        if "low" not in value or "high" not in value:
            raise ValueError(f"{where}: a range needs both low and high, got {value}")
        log, integer = value.get("log", False), value.get("int", False)
        if not isinstance(log, bool) or not isinstance(integer, bool) or (log and integer):
            raise ValueError(f"{where}: log and int are booleans, at most one of them true")
        kind = LogUniform if log else IntRange if integer else Uniform
        return _range(where, value["low"], value["high"], kind)
    if isinstance(value, list):
        if isinstance(default, Choice):
            return _choices(where, value)
        if len(value) == 2 and all(_number(v) for v in value):
            if isinstance(default, (LogUniform, Uniform, IntRange)):
                kind = type(default)
            elif key in _LOG_KEYS:
                kind = LogUniform
            elif all(isinstance(v, int) for v in value):
                kind = IntRange
            else:
                kind = Uniform
            return _range(where, value[0], value[1], kind)
        return _choices(where, value)
    return None


def resolve_space(config: Any) -> tuple[list[Dimension], dict[tuple[str | int, ...], Any]]:
    """The dimensions searched for ``config`` (a ``TrainConfig``) and the values that its
    ``search:`` block fixes (by config path).

    Raises ``ValueError`` (one line, naming the ``search`` key) for a loss that is not in the
    config, an unknown parameter, an empty range or a malformed entry.
    """
    from chanloss.losses import loss_spec

    block: dict[str, Any] = dict(config.search or {})
    names = [entry.name for entry in config.losses]
    for key, entries in block.items():
        where = f"search.{key}"
        if key != "optim" and key not in names:
            raise ValueError(
                f"{where}: the config has no loss {key!r}{_hint(key, names)}; a search: key "
                f"is a loss of the config ({', '.join(names)}) or optim"
            )
        if entries is not None and not isinstance(entries, dict):
            raise ValueError(
                f"{where}: expected a mapping of parameter: range, got {type(entries).__name__}"
            )
    dims: list[Dimension] = []
    fixed: dict[tuple[str | int, ...], Any] = {}
    for index, entry in enumerate(config.losses):
        space = dict(loss_spec(entry.name).search_space)
        overrides = block.get(entry.name) or {}
        accepted = _loss_keys(entry.name)
        for key in overrides:
            if key not in accepted:
                raise ValueError(
                    f"search.{entry.name}.{key}: loss {entry.name!r} has no parameter "
                    f"{key!r}{_hint(str(key), accepted)}; its parameters are {accepted}"
                )
        merged: dict[str, SearchParam | None] = dict(space)
        for key, value in overrides.items():
            where = f"search.{entry.name}.{key}"
            parsed = _parse(where, key, value, space.get(key))
            if parsed is None and value is not None:
                fixed[("losses", index, key)] = value
            merged[key] = parsed
        searched = {k: v for k, v in merged.items() if v is not None}
        if searched and names.count(entry.name) > 1:
            raise ValueError(
                f"search.{entry.name}: the config has {names.count(entry.name)} losses named "
                f"{entry.name!r}; tune needs each tuned loss once"
            )
        for key, param in searched.items():
            dims.append(Dimension(f"{entry.name}.{key}", ("losses", index, key), param))
    optim = block.get("optim") or {}
    for key, value in optim.items():
        where = f"search.optim.{key}"
        if key not in OPTIM_SPACE:
            raise ValueError(
                f"{where}: optim.{key} cannot be tuned{_hint(str(key), list(OPTIM_SPACE))}; "
                f"tunable optimiser keys are {list(OPTIM_SPACE)}"
            )
        parsed = _parse(where, key, value, OPTIM_SPACE[key](0.0, 0.0))
        if parsed is None and value is not None:
            fixed[("optim", key)] = value
        elif parsed is not None:
            dims.append(Dimension(f"optim.{key}", ("optim", key), parsed))
    return dims, fixed


def _set(raw: dict[str, Any], path: tuple[str | int, ...], value: Any) -> None:
    node: Any = raw
    for part in path[:-1]:
        node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
    node[path[-1]] = value


def apply_params(
    raw: dict[str, Any],
    dims: list[Dimension],
    fixed: dict[tuple[str | int, ...], Any],
    params: dict[str, Any],
) -> dict[str, Any]:
    """A copy of the raw config with the fixed values and the trial's ``params`` set, and the
    ``search`` block removed (the result is a plain training config)."""
    out = copy.deepcopy(raw)
    out.pop("search", None)
    for path, value in fixed.items():
        _set(out, path, value)
    for dim in dims:
        if dim.name in params:
            _set(out, dim.path, params[dim.name])
    return out


def _current(config: Any, dim: Dimension) -> Any:
    """The config's value of a dimension (the loss's constructor default when unset)."""
    from chanloss.losses import loss_spec

    if dim.path[0] == "optim":
        return getattr(config.optim, str(dim.path[1]))
    entry = config.losses[int(dim.path[1])]
    key = str(dim.path[2])
    if key in ("weight", "lr"):
        return getattr(entry, key)
    if key in entry.params():
        return entry.params()[key]
    return loss_spec(entry.name).default(key)


def _inside(param: SearchParam, value: Any) -> Any:
    """``value`` as the distribution holds it, or None when it lies outside."""
    if isinstance(param, Choice):
        for choice in param.values:
            if isinstance(choice, bool) == isinstance(value, bool) and choice == value:
                return choice
        return None
    if not _number(value) or not (param.low <= value <= param.high):
        return None
    return int(value) if isinstance(param, IntRange) else float(value)


def start_params(config: Any, dims: list[Dimension]) -> dict[str, Any]:
    """The config's own values of the searched parameters that lie inside their ranges (the
    first trial tries the config as given)."""
    out = {}
    for dim in dims:
        value = _inside(dim.param, _current(config, dim))
        if value is not None:
            out[dim.name] = value
    return out


def low_end_params(config: Any, dims: list[Dimension]) -> dict[str, Any]:
    """Every loss range at its low end (weights near zero: the losses almost off, close to the
    plain objective), other parameters at the config's values when inside their ranges."""
    out = start_params(config, dims)
    for dim in dims:
        if dim.path[0] == "losses" and not isinstance(dim.param, Choice):
            out[dim.name] = dim.param.low
    return out
