"""VGG-16 with batch normalisation (Simonyan & Zisserman, ICLR 2015, configuration D; BN after
every convolution as in torchvision's ``vgg16_bn``).

The body is the 13 conv-BN-ReLU layers with max pooling after blocks 1-4; the pooling after
block 5 is left out, so ``features`` (the output of the last ReLU) is ``image_size / 16`` wide:
14x14 at 224 px, 2x2 at 32 px, as in the MC-Loss authors' code (Chang et al., IEEE TIP 2020,
PRIS-CV/Mutual-Channel-Loss, ``CUB-200-2011.py``).

Heads (option ``head``):

- ``"gap"`` (default, any input size): ``embedding = GAP(features)``, ``classifier =
  Linear(C, K)``; the usual CIFAR VGG head.
- ``"mcloss"``: the authors' head, ``MaxPool2d(2)`` -> flatten (``C * 7 * 7`` at 224 px) ->
  ``BatchNorm1d -> Linear(·, head_hidden) -> BatchNorm1d -> ELU``, then ``classifier =
  Linear(head_hidden, K)``; ``embedding`` is the ELU output. It needs inputs of ``image_size``.

Widening for MC-Loss: ``channels_per_class = xi`` makes the last convolution output
``num_classes * xi`` channels (600 for 200 classes with xi = 3); ``feature_channels = C`` sets it
directly. The authors also widen conv4_3 to the same count (their configuration
``[..., 512, 512, 600, 'M', 512, 512, 600]``): ``widen_conv4_3=True`` reproduces that.
``width`` scales every other channel count (for fast tests).
"""

from __future__ import annotations

from torch import nn

from chanloss.core.validation import check_bool, check_float, check_int
from chanloss.models.common import (
    Backbone,
    build_head,
    conv_bn_relu,
    scaled,
    spatial_after,
    with_weights,
)
from chanloss.models.registry import register_model

_CONFIG_D = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG16BN(Backbone):
    """VGG-16 with BN (Simonyan & Zisserman 2015, config. D); see the module docstring.

    ``body`` is one ``nn.Sequential`` (torchvision-like numbering: ``body.40`` is the last
    convolution, ``body.42`` the last ReLU whose output is ``features``).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        image_size: int,
        feature_channels: int,
        width: float,
        widen_conv4_3: bool,
        head: str,
        head_hidden: int,
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        layers: list[nn.Module] = []
        cin = in_channels
        for b, block in enumerate(_CONFIG_D):
            for i, channels in enumerate(block):
                last = i == len(block) - 1
                cout = scaled(channels, width)
                if last and (b == 4 or (b == 3 and widen_conv4_3)):
                    cout = feature_channels
                layers += conv_bn_relu(cin, cout)
                cin = cout
            if b < 4:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.image_size = image_size
        spatial = spatial_after(image_size, 16)
        self._finish(cin, build_head(head, cin, hidden=head_hidden, spatial=spatial))


@register_model("vgg16_bn")
def vgg16_bn(
    *,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    channels_per_class: int | None = None,
    feature_channels: int | None = None,
    width: float = 1.0,
    widen_conv4_3: bool = False,
    head: str = "gap",
    head_hidden: int = 512,
    weights: str | None = None,
) -> VGG16BN:
    """VGG-16-BN; ``image_size`` a multiple of 32 (32 for CIFAR, 224 for CUB).

    ``weights``: a local state_dict to start from, in torchvision's ``vgg16_bn`` layout or this
    model's (:mod:`chanloss.models.pretrained`).
    """
    image_size = check_int("image_size", image_size, low=32)
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (e.g. 32 or 224), got {image_size}")
    width = check_float("width", width, low=0.0, low_inclusive=False)
    channels = scaled(512, width)
    if channels_per_class is not None:
        xi = check_int("channels_per_class", channels_per_class, low=1)
        channels = num_classes * xi
        if feature_channels is not None and feature_channels != channels:
            raise ValueError(
                f"feature_channels ({feature_channels}) contradicts channels_per_class * "
                f"num_classes ({xi} * {num_classes} = {channels}); give one of them"
            )
    elif feature_channels is not None:
        channels = check_int("feature_channels", feature_channels, low=1)
    model = VGG16BN(
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=image_size,
        feature_channels=channels,
        width=width,
        widen_conv4_3=check_bool("widen_conv4_3", widen_conv4_3),
        head=head,
        head_hidden=head_hidden,
    )
    return with_weights(model, weights)
