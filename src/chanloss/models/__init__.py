"""Backbones that return ``ModelOutput(logits, features, embedding)`` (docs/design.md).

``create_model(name, num_classes=..., in_channels=..., **opts)`` builds a registered backbone
(:data:`MODELS`: CIFAR ResNet-20/56/110, ResNet-18/50, VGG-16-BN, a small ConvNet) or wraps a
``"timm:NAME"`` / ``"torchvision:NAME"`` model in a :class:`FeatureTap`. Adding a backbone is one
new file here with ``@register_model("name")``: importing the package imports every module of it.
"""

from chanloss.core.discovery import import_submodules
from chanloss.models.base import ModelOutput
from chanloss.models.common import Backbone
from chanloss.models.convnet import SmallConvNet
from chanloss.models.gate import SEGate, add_channel_gate
from chanloss.models.registry import MODELS, create_model, model_options, register_model
from chanloss.models.resnet import CifarResNet, ResNet
from chanloss.models.tap import FeatureTap
from chanloss.models.vgg import VGG16BN

__all__ = [
    "MODELS",
    "VGG16BN",
    "Backbone",
    "CifarResNet",
    "FeatureTap",
    "ModelOutput",
    "ResNet",
    "SEGate",
    "SmallConvNet",
    "add_channel_gate",
    "create_model",
    "model_options",
    "register_model",
]

# Import every module of this package, so that a model added as one new file here is registered
# with no other edit.
import_submodules(__name__, __path__)
