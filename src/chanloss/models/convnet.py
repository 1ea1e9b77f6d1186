"""A small ConvNet for 8x8 digits, 28x28 MNIST and the 32 px synthetic fine-grained set."""

from __future__ import annotations

from torch import nn

from chanloss.core.validation import check_int
from chanloss.models.common import Backbone, build_head, conv_bn_relu
from chanloss.models.registry import register_model


class SmallConvNet(Backbone):
    """Four 3x3 conv-BN-ReLU layers (a VGG-style block design, Simonyan & Zisserman 2015).

    ``conv(w) -> conv(w) -> [pool] -> conv(2w) -> [pool] -> conv(feature_channels)``; ``pools``
    (0, 1 or 2) 2x2 max poolings are placed at the marked points, so an 8x8 input keeps a 4x4
    (``pools=1``, default) or 2x2 (``pools=2``) map. ``features`` is the last ReLU's output,
    ``embedding`` its global average, ``classifier = Linear(feature_channels, K)``.
    """

    def __init__(
        self, *, num_classes: int, in_channels: int, width: int, feature_channels: int, pools: int
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        layers = conv_bn_relu(in_channels, width) + conv_bn_relu(width, width)
        if pools >= 1:
            layers.append(nn.MaxPool2d(2))
        layers += conv_bn_relu(width, 2 * width)
        if pools >= 2:
            layers.append(nn.MaxPool2d(2))
        layers += conv_bn_relu(2 * width, feature_channels)
        self.body = nn.Sequential(*layers)
        self._finish(feature_channels, build_head("gap", feature_channels, hidden=0, spatial=None))


@register_model("convnet_small")
def convnet_small(
    *,
    num_classes: int,
    in_channels: int = 3,
    width: int = 32,
    feature_channels: int = 64,
    pools: int = 1,
) -> SmallConvNet:
    """Small ConvNet (use ``in_channels=1`` for grey digits)."""
    return SmallConvNet(
        num_classes=num_classes,
        in_channels=in_channels,
        width=check_int("width", width, low=1),
        feature_channels=check_int("feature_channels", feature_channels, low=1),
        pools=check_int("pools", pools, low=0, high=2),
    )
