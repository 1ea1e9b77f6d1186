"""Shared parts of the built-in backbones: the ``Backbone`` base class and the heads."""

from __future__ import annotations

import os

from torch import Tensor, nn

from chanloss.core.validation import check_choice, check_int
from chanloss.models.base import ModelOutput

HEADS = ("gap", "mcloss")


class GapHead(nn.Module):
    """Global average pooling (Lin, Chen, Yan, "Network in Network", ICLR 2014, Sec. 3.2):
    ``(B, C, H, W) -> (B, C)``; the embedding is the pooled vector."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_features = channels

    def forward(self, features: Tensor) -> Tensor:
        return features.mean(dim=(2, 3))


class MCLossHead(nn.Module):
    """The head of the MC-Loss authors' code (Chang et al., IEEE TIP 2020; PRIS-CV/Mutual-Channel-Loss).

    ``pool`` (VGG16: ``MaxPool2d(2)``; ResNet-18: global max pooling) -> flatten ->
    ``BatchNorm1d -> Linear(·, hidden) -> BatchNorm1d -> ELU``; the final ``Linear(hidden, K)``
    is the backbone's ``classifier``, so the embedding is the ``hidden``-d ELU output.
    ``spatial`` is the feature-map size the flattened input was built for (``None``: global
    pooling, any size).
    """

    def __init__(self, channels: int, hidden: int, *, spatial: tuple[int, int] | None) -> None:
        super().__init__()
        self.spatial = spatial
        if spatial is None:
            self.pool: nn.Module = nn.AdaptiveMaxPool2d(1)
            flat = channels
        else:
            self.pool = nn.MaxPool2d(2)
            flat = channels * (spatial[0] // 2) * (spatial[1] // 2)
        self.mlp = nn.Sequential(
            nn.BatchNorm1d(flat), nn.Linear(flat, hidden), nn.BatchNorm1d(hidden), nn.ELU()
        )
        self.out_features = hidden

    def forward(self, features: Tensor) -> Tensor:
        if self.spatial is not None and tuple(features.shape[2:]) != self.spatial:
            raise ValueError(
                f"head 'mcloss' was built for feature maps of size {self.spatial} (set by "
                f"image_size), got features of shape {tuple(features.shape)}"
            )
        return self.mlp(self.pool(features).flatten(1))


def build_head(
    head: str, channels: int, *, hidden: int, spatial: tuple[int, int] | None
) -> nn.Module:
    """``"gap"`` -> :class:`GapHead`; ``"mcloss"`` -> :class:`MCLossHead`."""
    check_choice("head", head, HEADS)
    if head == "gap":
        return GapHead(channels)
    return MCLossHead(channels, check_int("head_hidden", hidden, low=1), spatial=spatial)


def scaled(channels: int, width: float) -> int:
    """``round(channels * width)``, at least 1."""
    return max(1, round(channels * width))


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    """3x3 convolution (no bias), batch norm, ReLU."""
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def init_weights(module: nn.Module) -> None:
    """He (fan-out) normal init for convolutions, BN to identity, small normal for Linear."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)


class Backbone(nn.Module):
    """Base of the built-in backbones (model contract of docs/design.md).

    ``forward(x) -> ModelOutput(logits, features, embedding)`` with ``features = forward_features(x)``
    the last convolutional map ``(B, num_features, H, W)`` after its final BN/ReLU,
    ``embedding = forward_head(features, pre_logits=True)`` ``(B, embedding_dim)`` and
    ``logits = classifier(embedding)`` ``(B, num_classes)``. Subclasses build ``self.body``
    (features), ``self.head`` (features -> embedding) and ``self.classifier`` (``nn.Linear``).
    With a channel gate (``self.gate``, :func:`~chanloss.models.gate.add_channel_gate`) the head
    reads ``features * attention`` and the output carries ``attention``.
    """

    body: nn.Module
    head: nn.Module
    classifier: nn.Linear
    gate: nn.Module | None

    def __init__(self, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.gate = None

    def _finish(self, num_features: int, head: nn.Module) -> None:
        self.num_features = num_features
        self.head = head
        self.embedding_dim = int(head.out_features)
        self.classifier = nn.Linear(self.embedding_dim, self.num_classes)
        init_weights(self)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last convolutional feature map ``(B, C, H, W)``."""
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__} expects input of shape (B, {self.in_channels}, H, W), "
                f"got {got}"
            )
        return self.body(x)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Logits ``(B, K)`` from ``features``, or the embedding ``(B, D)`` with ``pre_logits``
        (through the channel gate, if any)."""
        if self.gate is not None:
            features = self.gate(features)[0]
        embedding = self.head(features)
        return embedding if pre_logits else self.classifier(embedding)

    def forward(self, x: Tensor) -> ModelOutput:
        features = self.forward_features(x)
        if self.gate is None:
            embedding = self.head(features)
            return ModelOutput(self.classifier(embedding), features, embedding)
        gated, attention = self.gate(features)
        embedding = self.head(gated)
        return ModelOutput(self.classifier(embedding), features, embedding, attention)


def with_weights(model: Backbone, weights: str | None) -> Backbone:
    """``model`` after loading ``weights`` (a local file; ``None``: as initialised). The load
    report is kept as ``model.pretrained_report``; see :mod:`chanloss.models.pretrained`."""
    if weights is not None:
        from chanloss.models.pretrained import load_pretrained, loading_weights, mark_pretrained

        if not isinstance(weights, (str, os.PathLike)):
            raise ValueError(f"weights must be a path to a state_dict file, got {weights!r}")
        if loading_weights():
            model.pretrained_report = load_pretrained(model, weights)
        else:
            mark_pretrained(model)
    return model


def spatial_after(image_size: int, downsample: int) -> tuple[int, int]:
    """The feature-map size of a square input after total stride ``downsample``."""
    side = image_size // downsample
    return side, side


__all__ = [
    "Backbone",
    "GapHead",
    "MCLossHead",
    "build_head",
    "conv_bn_relu",
    "init_weights",
    "scaled",
    "spatial_after",
    "with_weights",
]
