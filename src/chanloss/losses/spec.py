"""A loss's parameter spec: built once, when the loss is registered, from its constructor.

:class:`LossSpec` says which keys a ``losses`` config entry of the loss may hold and their
defaults (:attr:`LossSpec.params`), which constructor arguments come from the model and the
data instead (:attr:`LossSpec.context`: ``num_classes``, ``num_channels``, ``embedding_dim``),
which parameters exclude one another (a loss class's ``exclusive_params``: MC-Loss's
``keep_ratio`` gets no default when ``drop`` is given), what ``chanloss tune`` searches (its
``search_space``) and whether its ``terms`` take the trainer's generator. The config schema,
the search, the generated reference and the builders read the spec; nothing else reads a
loss's signature.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from chanloss.core.validation import did_you_mean

__all__ = ["CONTEXT", "LossParam", "LossSpec", "REQUIRED"]

#: Constructor arguments the trainer takes from the data and the model (never stored).
CONTEXT = ("num_classes", "num_channels", "embedding_dim")


class _Required:
    """The default of a parameter that has none (the config must give it)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class LossParam:
    """One constructor parameter of a loss: its name and default (:data:`REQUIRED` if none)."""

    name: str
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        """Whether a config must give it."""
        return self.default is REQUIRED


@dataclass(frozen=True)
class LossSpec:
    """The parameters of the loss registered as ``name`` (see the module docstring)."""

    name: str
    cls: type
    params: dict[str, LossParam]  # every constructor parameter (context ones too), in order
    context: tuple[str, ...]  # the CONTEXT names the constructor takes
    exclusive: dict[str, str] = field(default_factory=dict)  # param -> the one excluding it
    search_space: dict[str, Any] = field(default_factory=dict)
    takes_generator: bool = False

    @classmethod
    def of(cls, name: str, loss_class: type) -> LossSpec:
        """The spec of ``loss_class`` (read from its constructor and class attributes)."""
        signature = inspect.signature(loss_class.__init__).parameters.values()
        params = {
            p.name: LossParam(p.name, REQUIRED if p.default is p.empty else p.default)
            for p in signature
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }
        exclusive = dict(getattr(loss_class, "exclusive_params", None) or {})
        for key, other in exclusive.items():
            if key not in params or other not in params:
                raise ValueError(
                    f"{loss_class.__name__}.exclusive_params names {key!r}/{other!r}, expected "
                    f"constructor parameters ({sorted(params)})"
                )
        terms = inspect.signature(loss_class.terms).parameters
        return cls(
            name=name,
            cls=loss_class,
            params=params,
            context=tuple(c for c in CONTEXT if c in params),
            exclusive=exclusive,
            search_space=dict(getattr(loss_class, "search_space", None) or {}),
            takes_generator="generator" in terms,
        )

    @property
    def accepted(self) -> list[str]:
        """Every key a config entry may give (sorted; context parameters included)."""
        return sorted(self.params)

    @property
    def settable(self) -> list[str]:
        """The keys a search or a config sets (no context parameter), plus ``weight``/``lr``."""
        return sorted({k for k in self.params if k not in CONTEXT} | {"weight", "lr"})

    def default(self, key: str) -> Any:
        """The constructor default of ``key`` (``None`` when it has none)."""
        param = self.params.get(key)
        return None if param is None or param.required else param.default

    def check_keys(self, given: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` naming the first key of ``given`` that is no parameter."""
        for key in given:
            if key not in self.params:
                hint = did_you_mean(key, [*self.accepted, "weight", "lr"])
                raise ValueError(
                    f"loss {self.name!r} has no parameter {key!r}{hint}; "
                    f"its parameters are {self.accepted}"
                )

    def defaults(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults a config entry with the keys ``given`` lacks, so that a stored config
        names every parameter a run used: no context parameter, not ``weight`` (the entry's
        own multiplier), none that a given key excludes, none without a default."""
        out = {}
        for key, param in self.params.items():
            if key in given or key in CONTEXT or key == "weight" or param.required:
                continue
            if self.exclusive.get(key) in given:
                continue
            out[key] = plain(param.default)
        return out

    def build(self, context: Mapping[str, Any] | None = None, **params: Any) -> Any:
        """The loss with ``params``; each ``context`` entry is passed if the constructor takes
        it and ``params`` does not set it."""
        unknown = sorted(k for k in params if k not in self.params)
        if unknown:
            raise ValueError(
                f"loss {self.name!r} has no parameter {unknown[0]!r}; its parameters are "
                f"{self.accepted}"
            )
        kwargs = {k: v for k, v in (context or {}).items() if k in self.params and k not in params}
        return self.cls(**kwargs, **params)


def plain(value: Any) -> Any:
    """A default as the YAML value that means the same (a float subclass becomes a float)."""
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value
