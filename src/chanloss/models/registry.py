"""The model registry: ``create_model(name, num_classes=..., in_channels=..., **opts)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from chanloss.core.validation import check_int, check_options, keyword_options
from chanloss.models.gate import GATE_DEFAULTS, GATES, add_channel_gate

ModelFactory = Callable[..., nn.Module]

#: Built-in backbones, name -> factory ``(*, num_classes, in_channels, **opts) -> nn.Module``.
MODELS: dict[str, ModelFactory] = {}

#: Prefixes of ``"prefix:NAME"`` model names that build a third-party model wrapped in a
#: :class:`~chanloss.models.tap.FeatureTap` (filled in by ``chanloss.models.adapters``).
ADAPTERS: dict[str, ModelFactory] = {}

_CONTEXT = ("num_classes", "in_channels")


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator that adds a factory to :data:`MODELS` under ``name``."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = factory
        return factory

    return decorate


def model_options(name: str) -> tuple[str, ...]:
    """The options a registered model accepts besides ``num_classes`` and ``in_channels``
    (its own and the channel gate's, ``channel_gate`` and ``gate_reduction``)."""
    own = tuple(o for o in keyword_options(MODELS[name]) if o not in _CONTEXT)
    return own + tuple(GATE_DEFAULTS)


def create_model(name: str, *, num_classes: int, in_channels: int = 3, **opts: object) -> nn.Module:
    """Build the backbone ``name`` for ``num_classes`` classes and ``in_channels`` input channels.

    ``name`` is a key of :data:`MODELS` or ``"timm:NAME"`` / ``"torchvision:NAME"`` (a model of
    that package wrapped in a ``FeatureTap``; options ``layer``, ``classifier`` and the
    package's own keyword arguments). Every model returns a
    :class:`~chanloss.models.base.ModelOutput`. An unknown name or option raises ``ValueError``
    listing the allowed values. ``channel_gate="se"`` (any model) adds an
    :class:`~chanloss.models.gate.SEGate` between the feature map and the head, with
    ``gate_reduction`` (default 16).
    """
    gate = opts.pop("channel_gate", None)
    reduction = opts.pop("gate_reduction", GATE_DEFAULTS["gate_reduction"])
    if gate is not None and gate not in GATES:
        raise ValueError(f"channel_gate must be one of {', '.join(GATES)} or null, got {gate!r}")
    model = _create(name, num_classes=num_classes, in_channels=in_channels, **opts)
    if gate == "se":
        add_channel_gate(model, reduction=reduction)
    return model


def _create(name: str, *, num_classes: int, in_channels: int, **opts: object) -> nn.Module:
    num_classes = check_int("num_classes", num_classes, low=1)
    in_channels = check_int("in_channels", in_channels, low=1)
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {name!r}")
    prefix, sep, rest = name.partition(":")
    if sep:
        if prefix not in ADAPTERS:
            raise ValueError(
                f"unknown model prefix {prefix!r} in {name!r}; expected one of "
                f"{', '.join(repr(p + ':NAME') for p in sorted(ADAPTERS))}"
            )
        if not rest:
            raise ValueError(f"model name {name!r} lacks the model after {prefix + ':'!r}")
        return ADAPTERS[prefix](rest, num_classes=num_classes, in_channels=in_channels, **opts)
    if name not in MODELS:
        adapters = ", ".join(repr(p + ":NAME") for p in sorted(ADAPTERS))
        raise ValueError(
            f"unknown model {name!r}; expected one of {', '.join(map(repr, sorted(MODELS)))} "
            f"or {adapters}"
        )
    check_options("model", name, opts, model_options(name)[: -len(GATE_DEFAULTS)])
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **opts)
