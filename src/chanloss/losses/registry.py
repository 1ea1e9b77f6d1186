"""Loss registry: config names (snake case) to classes, and construction from a config."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from chanloss.losses.base import Loss

LossT = TypeVar("LossT", bound=type[Loss])

LOSSES: dict[str, type[Loss]] = {}


def register_loss(name: str) -> Callable[[LossT], LossT]:
    """Class decorator: make a loss selectable by ``name`` in configs."""

    def decorate(cls: LossT) -> LossT:
        if name in LOSSES and LOSSES[name] is not cls:
            raise ValueError(f"loss name {name!r} is already registered to {LOSSES[name].__name__}")
        LOSSES[name] = cls
        cls.config_name = name  # type: ignore[attr-defined]
        return cls

    return decorate


def create_loss(name: str, *, context: dict[str, Any] | None = None, **params: Any) -> Loss:
    """Build the loss registered as ``name``.

    ``params`` are the user's keyword arguments (a config entry). ``context`` holds what the
    trainer knows about the model (``num_classes``, ``num_channels``, ``embedding_dim``); each
    entry is passed only if the loss's constructor takes it and the user did not set it.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    cls = LOSSES[name]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in (context or {}).items() if k in accepted and k not in params}
    unknown = sorted(k for k in params if k not in accepted)
    if unknown:
        allowed = sorted(k for k in accepted if k not in ("self", "args", "kwargs"))
        raise ValueError(
            f"loss {name!r} has no parameter {unknown[0]!r}; its parameters are {allowed}"
        )
    return cls(**kwargs, **params)
