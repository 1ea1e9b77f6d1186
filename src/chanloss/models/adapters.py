"""``"timm:NAME"`` and ``"torchvision:NAME"`` models, wrapped in a :class:`FeatureTap`.

The packages are imported only when such a model is asked for; when the import fails (not
installed, or built for another torch) an ``ImportError`` says which package and why.
Options: ``layer`` (the module whose output is ``features``), ``classifier`` (the final
linear layer, whose input is ``embedding``; default: GAP of ``features``) and the package's
own keyword arguments. ``probe_size`` (default 224; ``None`` to skip) runs one eval-mode pass
on a zero image of that size so that ``num_features``/``embedding_dim`` are known before
training. For ResNet-like names (``resnet*``, ``resnext*``, ``wide_resnet*``,
``seresnet*``) ``layer`` defaults to ``"layer4"`` and ``classifier`` to ``"fc"``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import nn

from chanloss.core.validation import check_int
from chanloss.models.registry import ADAPTERS, MODELS
from chanloss.models.tap import FeatureTap

_RESNET_PREFIXES = ("resnet", "resnext", "wide_resnet", "seresnet")


def import_package(package: str, model: str) -> ModuleType:
    """Import ``package`` or raise ``ImportError`` naming it, the model and the cause."""
    try:
        return importlib.import_module(package)
    except Exception as exc:  # a wrong torch build raises RuntimeError/AttributeError too
        raise ImportError(
            f"model {package + ':' + model!r} needs the '{package}' package, which could not be "
            f"imported ({type(exc).__name__}: {exc}); install a {package} build that matches "
            f"torch {torch.__version__}, or use a built-in model: {', '.join(sorted(MODELS))}"
        ) from exc


def _defaults(
    package: str, model: str, layer: str | None, classifier: str | None
) -> tuple[str, str | None]:
    if layer is None:
        if not model.startswith(_RESNET_PREFIXES):
            raise ValueError(
                f"model {package + ':' + model!r} needs the option layer=<name of the module "
                "whose output is the (B, C, H, W) feature map>, e.g. 'layer4' for a ResNet "
                "(and classifier=<name of the final nn.Linear>, e.g. 'fc')"
            )
        return "layer4", "fc" if classifier is None else classifier
    return layer, classifier


def _wrap(
    model: nn.Module, layer: str, classifier: str | None, in_channels: int, probe: int | None
) -> FeatureTap:
    tap = FeatureTap(model, layer=layer, classifier=classifier)
    if probe is not None:
        size = check_int("probe_size", probe, low=1)
        tap.infer_dims((1, in_channels, size, size))
    return tap


def timm_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    layer: str | None = None,
    classifier: str | None = None,
    pretrained: bool = False,
    probe_size: int | None = 224,
    **kwargs: object,
) -> FeatureTap:
    """``timm.create_model(name, pretrained=..., num_classes=..., in_chans=..., **kwargs)``."""
    timm = import_package("timm", name)
    layer, classifier = _defaults("timm", name, layer, classifier)
    model = timm.create_model(
        name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **kwargs
    )
    return _wrap(model, layer, classifier, in_channels, probe_size)


def torchvision_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    layer: str | None = None,
    classifier: str | None = None,
    weights: str | None = None,
    probe_size: int | None = 224,
    **kwargs: object,
) -> FeatureTap:
    """``torchvision.models.get_model(name, weights=..., num_classes=..., **kwargs)``.

    torchvision's classifiers take 3 input channels; another ``in_channels`` is an error.
    """
    if in_channels != 3:
        raise ValueError(f"torchvision models take in_channels=3, got {in_channels}")
    torchvision = import_package("torchvision", name)
    layer, classifier = _defaults("torchvision", name, layer, classifier)
    model: nn.Module = torchvision.models.get_model(
        name, weights=weights, num_classes=num_classes, **kwargs
    )
    return _wrap(model, layer, classifier, in_channels, probe_size)


ADAPTERS["timm"] = timm_model
ADAPTERS["torchvision"] = torchvision_model
