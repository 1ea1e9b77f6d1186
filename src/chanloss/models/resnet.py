"""Residual networks (He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016).

- ``resnet20`` / ``resnet56`` / ``resnet110``: the CIFAR networks of Sec. 4.2 (depth ``6n + 2``,
  a 3x3 stem with 16 channels, three stages of ``n`` basic blocks with 16/32/64 channels and
  strides 1/2/2, global average pooling, one linear layer). Shortcut option ``"A"`` (the paper's
  choice for CIFAR, default): identity, subsampled by striding and zero-padded with the extra
  channels appended after the input's; option ``"B"``: a 1x1 convolution + BN projection where
  the shape changes.
- ``resnet18`` / ``resnet50``: the ImageNet layout of Table 1 (7x7/2 stem + 3x3/2 max pooling,
  four stages of basic (18) or bottleneck (50) blocks with 64/128/256/512 base channels; option B
  projections; the stride of a bottleneck sits on its 3x3 convolution, as in torchvision).
  ``small_input=True`` replaces the stem by a 3x3/1 convolution without max pooling (for 32 px);
  ``layer4_stride=1`` keeps a 14x14 map at 224 px (the MC-Loss authors' ResNet-18 setup).

``feature_channels`` sets the output channels of the last stage, i.e. ``features.shape[1]``
(MC-Loss needs at least ``num_classes``). For basic blocks the whole last stage gets that width
(as the MC-Loss authors' ResNet-18 with 600 channels); for bottlenecks only the stage's output
(the 1x1 expansion) does. ``width`` scales every other channel count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chanloss.core.validation import check_bool, check_choice, check_float, check_int
from chanloss.models.common import Backbone, build_head, scaled, with_weights
from chanloss.models.registry import register_model


class ShortcutA(nn.Module):
    """Parameter-free shortcut (option A): stride subsampling, zero channels appended.

    After channel pruning (``chanloss prune``) its output channels no longer map one to one
    onto the first input channels: ``index[j]`` names the input channel that output ``j``
    copies, ``in_channels`` meaning a zero channel. :meth:`keep_outputs` and
    :meth:`remove_inputs` keep that map (a buffer, rebuilt when a pruned checkpoint is
    loaded) in step with the channels removed around the shortcut.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        if cout < cin:
            raise ValueError(
                f"shortcut 'A' pads channels and needs out >= in channels, got {cin} -> {cout}; "
                "use shortcut='B' or a larger feature_channels"
            )
        self.stride = stride
        self.extra = cout - cin
        self.in_channels, self.out_channels = cin, cout
        self.mapped = False  # True once pruned: forward gathers through ``index``
        self.register_buffer("index", torch.arange(cout).clamp_max(cin), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.mapped:
            return F.pad(x, (0, 0, 0, 0, 0, 1)).index_select(1, self.index)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x

    def keep_outputs(self, removed: list[int]) -> None:
        """Drop the output channels ``removed`` (indices into the current outputs)."""
        keep = _complement(self.out_channels, removed)
        self.index = self.index[keep]
        self.out_channels, self.mapped = len(keep), True

    def remove_inputs(self, removed: list[int]) -> None:
        """Drop the input channels ``removed``: outputs that copied one become zero channels."""
        keep = _complement(self.in_channels, removed)
        new_position = torch.full((self.in_channels + 1,), len(keep), dtype=torch.long)
        new_position[keep] = torch.arange(len(keep))
        self.index = new_position.to(self.index.device)[self.index]
        self.in_channels, self.mapped = len(keep), True


def _complement(total: int, removed: list[int]) -> Tensor:
    mask = torch.ones(total, dtype=torch.bool)
    mask[torch.as_tensor(list(removed), dtype=torch.long)] = False
    return torch.nonzero(mask).flatten()


def projection(cin: int, cout: int, stride: int) -> nn.Module:
    """Option B shortcut: 1x1 convolution with stride, then BN."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
        nn.BatchNorm2d(cout),
    )


def make_shortcut(kind: str, cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return ShortcutA(cin, cout, stride) if kind == "A" else projection(cin, cout, stride)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut, ReLU after the sum (He et al. 2016, Fig. 2)."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = make_shortcut(shortcut, cin, cout, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand, each with BN (He et al. 2016, Fig. 5)."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = make_shortcut("B", cin, cout, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(Backbone):
    """CIFAR ResNet of He et al., CVPR 2016, Sec. 4.2 (depth ``6n + 2``; see the module docstring).

    ``features``: output of the last stage, ``(B, feature_channels, H/4, W/4)`` (8x8 at 32 px);
    ``embedding``: its global average, read by ``classifier = Linear(C, K)``.
    """

    def __init__(
        self,
        *,
        depth: int,
        num_classes: int,
        in_channels: int,
        width: float,
        shortcut: str,
        feature_channels: int | None,
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        n = (depth - 2) // 6
        widths = [scaled(16, width), scaled(32, width), scaled(64, width)]
        if feature_channels is not None:
            widths[2] = feature_channels
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        cin = widths[0]
        for stage, cout in enumerate(widths):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride, shortcut))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.body = nn.Sequential(*layers)
        self.depth = depth
        self._finish(cin, build_head("gap", cin, hidden=0, spatial=None))


class ResNet(Backbone):
    """ImageNet-layout ResNet of He et al., CVPR 2016, Table 1 (see the module docstring).

    ``features``: output of ``layer4`` (``body.layer4``), ``(B, C, H/32, W/32)`` by default;
    ``embedding``: global average (head ``"gap"``) or the MC-Loss authors' MLP output (head
    ``"mcloss"``: global max pooling, BN, Linear(C, hidden), BN, ELU).
    """

    def __init__(
        self,
        *,
        block: str,
        layers: tuple[int, int, int, int],
        num_classes: int,
        in_channels: int,
        width: float,
        layer4_stride: int,
        small_input: bool,
        feature_channels: int | None,
        head: str,
        head_hidden: int,
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels)
        base = scaled(64, width)
        if small_input:
            stem = [nn.Conv2d(in_channels, base, 3, padding=1, bias=False)]
        else:
            stem = [nn.Conv2d(in_channels, base, 7, stride=2, padding=3, bias=False)]
        stem += [nn.BatchNorm2d(base), nn.ReLU(inplace=True)]
        if not small_input:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.body = nn.Sequential()
        self.body.add_module("stem", nn.Sequential(*stem))
        expansion = 4 if block == "bottleneck" else 1
        cin = base
        strides = (1, 2, 2, layer4_stride)
        for stage, (count, stride) in enumerate(zip(layers, strides, strict=True)):
            mid = base * 2**stage
            cout = mid * expansion
            if stage == 3 and feature_channels is not None:
                cout = feature_channels
                mid = feature_channels if block == "basic" else mid
            blocks: list[nn.Module] = []
            for i in range(count):
                s = stride if i == 0 else 1
                if block == "basic":
                    blocks.append(BasicBlock(cin, cout, s, "B"))
                else:
                    blocks.append(Bottleneck(cin, mid, cout, s))
                cin = cout
            self.body.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self._finish(cin, build_head(head, cin, hidden=head_hidden, spatial=None))


def _check_feature_channels(value: int | None) -> int | None:
    return None if value is None else check_int("feature_channels", value, low=1)


def _cifar(depth: int, num_classes: int, in_channels: int, width, shortcut, feature_channels):
    return CifarResNet(
        depth=depth,
        num_classes=num_classes,
        in_channels=in_channels,
        width=check_float("width", width, low=0.0, low_inclusive=False),
        shortcut=check_choice("shortcut", shortcut, ("A", "B")),
        feature_channels=_check_feature_channels(feature_channels),
    )


@register_model("resnet20")
def resnet20(
    *,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    shortcut: str = "A",
    feature_channels: int | None = None,
) -> CifarResNet:
    """CIFAR ResNet-20 (n = 3), 0.27 M parameters at width 1."""
    return _cifar(20, num_classes, in_channels, width, shortcut, feature_channels)


@register_model("resnet56")
def resnet56(
    *,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    shortcut: str = "A",
    feature_channels: int | None = None,
) -> CifarResNet:
    """CIFAR ResNet-56 (n = 9), 0.85 M parameters at width 1."""
    return _cifar(56, num_classes, in_channels, width, shortcut, feature_channels)


@register_model("resnet110")
def resnet110(
    *,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    shortcut: str = "A",
    feature_channels: int | None = None,
) -> CifarResNet:
    """CIFAR ResNet-110 (n = 18), 1.7 M parameters at width 1."""
    return _cifar(110, num_classes, in_channels, width, shortcut, feature_channels)


def _imagenet(block: str, layers, num_classes: int, in_channels: int, **opts) -> ResNet:
    model = ResNet(
        block=block,
        layers=layers,
        num_classes=num_classes,
        in_channels=in_channels,
        width=check_float("width", opts["width"], low=0.0, low_inclusive=False),
        layer4_stride=check_choice("layer4_stride", opts["layer4_stride"], (1, 2)),
        small_input=check_bool("small_input", opts["small_input"]),
        feature_channels=_check_feature_channels(opts["feature_channels"]),
        head=opts["head"],
        head_hidden=opts["head_hidden"],
    )
    return with_weights(model, opts["weights"])


@register_model("resnet18")
def resnet18(
    *,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    layer4_stride: int = 2,
    small_input: bool = False,
    feature_channels: int | None = None,
    head: str = "gap",
    head_hidden: int = 512,
    weights: str | None = None,
) -> ResNet:
    """ResNet-18 (basic blocks 2-2-2-2), ImageNet layout.

    ``weights``: a local state_dict to start from, in torchvision's layout or this model's
    (:mod:`chanloss.models.pretrained`).
    """
    return _imagenet(
        "basic",
        (2, 2, 2, 2),
        num_classes,
        in_channels,
        width=width,
        layer4_stride=layer4_stride,
        small_input=small_input,
        feature_channels=feature_channels,
        head=head,
        head_hidden=head_hidden,
        weights=weights,
    )


@register_model("resnet50")
def resnet50(
    *,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    layer4_stride: int = 2,
    small_input: bool = False,
    feature_channels: int | None = None,
    head: str = "gap",
    head_hidden: int = 512,
    weights: str | None = None,
) -> ResNet:
    """ResNet-50 (bottlenecks 3-4-6-3), ImageNet layout, 2048 feature channels at width 1.

    ``weights``: a local state_dict to start from, in torchvision's layout or this model's
    (:mod:`chanloss.models.pretrained`).
    """
    return _imagenet(
        "bottleneck",
        (3, 4, 6, 3),
        num_classes,
        in_channels,
        width=width,
        layer4_stride=layer4_stride,
        small_input=small_input,
        feature_channels=feature_channels,
        head=head,
        head_hidden=head_hidden,
        weights=weights,
    )
