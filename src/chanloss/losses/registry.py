"""Loss registry: config names (snake case) to classes and their specs, and construction.

Registering a loss (:func:`register_loss`) builds its :class:`~chanloss.losses.spec.LossSpec`
once; :func:`loss_spec` returns it and :func:`create_loss` builds the loss from a config entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from chanloss.losses.base import Loss
from chanloss.losses.spec import LossSpec

LossT = TypeVar("LossT", bound=type[Loss])

LOSSES: dict[str, type[Loss]] = {}
_SPECS: dict[str, LossSpec] = {}


def register_loss(name: str) -> Callable[[LossT], LossT]:
    """Class decorator: make a loss selectable by ``name`` in configs (and build its spec)."""

    def decorate(cls: LossT) -> LossT:
        if name in LOSSES and LOSSES[name] is not cls:
            raise ValueError(f"loss name {name!r} is already registered to {LOSSES[name].__name__}")
        LOSSES[name] = cls
        cls.config_name = name  # type: ignore[attr-defined]
        _SPECS[name] = LossSpec.of(name, cls)
        return cls

    return decorate


def loss_spec(name: str) -> LossSpec:
    """The spec of the loss registered as ``name`` (``ValueError`` for an unknown name)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    spec = _SPECS.get(name)
    if spec is None or spec.cls is not LOSSES[name]:  # put into LOSSES without the decorator
        spec = _SPECS[name] = LossSpec.of(name, LOSSES[name])
    return spec


def create_loss(name: str, *, context: dict[str, Any] | None = None, **params: Any) -> Loss:
    """Build the loss registered as ``name``.

    ``params`` are the user's keyword arguments (a config entry). ``context`` holds what the
    trainer knows about the model (``num_classes``, ``num_channels``, ``embedding_dim``); each
    entry is passed only if the loss's constructor takes it and the user did not set it.
    """
    return loss_spec(name).build(context, **params)
