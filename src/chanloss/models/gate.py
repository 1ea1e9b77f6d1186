"""The channel gate: a squeeze-and-excitation block between a model's feature map and its head.

CC-Loss's ``placement: gate`` (docs/cc-loss.md) reads the gate's attention vector; the gate is
part of the model (saved, exported, used at inference, counted in MACs, prunable), so a run
with the gate and no CC-Loss is the fair control of a CC-Loss run.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from chanloss.core.validation import check_int

__all__ = ["GATE_DEFAULTS", "GATES", "SEGate", "add_channel_gate", "gate_of"]

#: ``channel_gate`` values: ``None`` (no gate, or one added for CC-Loss's gate placement by
#: the trainer), ``"none"`` (never a gate) and ``"se"``.
GATES = ("none", "se")
#: The model options every model takes besides its own (``create_model`` handles them).
GATE_DEFAULTS: dict[str, Any] = {"channel_gate": None, "gate_reduction": 16}


class SEGate(nn.Module):
    """Squeeze-and-excitation channel gate (Hu, Shen, Sun, "Squeeze-and-Excitation Networks",
    CVPR 2018, Eq. 2-4): ``z = GAP(F)``, ``a = sigmoid(W2 relu(W1 z + b1) + b2)``, and the
    head reads ``F * (scale * a)`` (``a`` broadcast over ``H, W``).

    ``scale`` (default 2, ours) makes the gate the identity on average at initialisation
    (``a`` about 0.5): SE blocks sit inside residual branches in the SE paper, and a gate in
    front of the classifier that halved the features trained markedly slower than no gate in a
    one-off check on digits (not a recorded benchmark; docs/cc-loss.md).

    ``W1: C -> hidden``, ``W2: hidden -> C`` with ``hidden = max(C // reduction,
    min(min_hidden, C))`` (30 channels at reduction 16 get 4 hidden units, not 1).
    Plain :class:`~torch.nn.Linear` layers with PyTorch's default initialisation, so
    ``a`` differs between samples from the first step. ``forward(F) -> (F * a, a)``.
    """

    def __init__(
        self, channels: int, *, reduction: int = 16, min_hidden: int = 4, scale: float = 2.0
    ) -> None:
        super().__init__()
        self.scale = float(scale)
        self.channels = check_int("channels", channels, low=1)
        self.reduction = check_int("gate_reduction", reduction, low=1)
        hidden = max(1, self.channels // self.reduction)
        floor = min(check_int("min_hidden", min_hidden, low=1), self.channels)
        self.hidden = max(hidden, floor)
        self.fc1 = nn.Linear(self.channels, self.hidden)
        self.fc2 = nn.Linear(self.hidden, self.channels)

    def attention(self, features: Tensor) -> Tensor:
        """``a`` in ``(0, 1)``, shape ``(B, C)``."""
        if not isinstance(features, Tensor) or features.dim() != 4:
            got = tuple(features.shape) if isinstance(features, Tensor) else type(features)
            raise ValueError(
                f"the channel gate needs a (B, C, H, W) feature map, got {got}; "
                "remove model.channel_gate or tap a convolutional layer"
            )
        if features.shape[1] != self.channels:
            raise ValueError(
                f"the channel gate was built for {self.channels} channels, got features of "
                f"shape {tuple(features.shape)}"
            )
        z = features.mean(dim=(2, 3))
        return self.fc2(self.fc1(z).relu()).sigmoid()

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        a = self.attention(features)
        return features * (self.scale * a)[:, :, None, None], a

    def extra_repr(self) -> str:
        return f"channels={self.channels}, hidden={self.hidden}, scale={self.scale:g}"


def gate_of(model: nn.Module) -> SEGate | None:
    """The model's channel gate (``model.gate``), or ``None``."""
    gate = getattr(model, "gate", None)
    return gate if isinstance(gate, SEGate) else None


def add_channel_gate(
    model: nn.Module,
    *,
    channels: int | None = None,
    reduction: int = 16,
    min_hidden: int = 4,
    kind: str = "se",
) -> nn.Module:
    """Put an :class:`SEGate` between ``model``'s feature map and its head, in place; returns
    ``model``.

    ``model`` is a built-in backbone or a :class:`~chanloss.models.tap.FeatureTap`; its output
    then carries ``attention``. ``channels`` is the feature-map width (default
    ``model.num_features``: give it, or call the tap's ``infer_dims``, when the tap could not
    guess it). A model without a known width is a ``ValueError``.
    """
    if kind != "se":
        raise ValueError(f"channel_gate must be one of {GATES}, got {kind!r}")
    if channels is None:
        channels = getattr(model, "num_features", None)
    if not hasattr(model, "gate") or not isinstance(channels, int):
        raise ValueError(
            f"the channel gate goes into a built-in backbone or a FeatureTap whose feature "
            f"map width is known (num_features), got {type(model).__name__} with num_features "
            f"{channels!r}; wrap the model in FeatureTap and call infer_dims first"
        )
    if gate_of(model) is not None:
        raise ValueError(f"{type(model).__name__} already has a channel gate")
    gate = SEGate(channels, reduction=reduction, min_hidden=min_hidden)
    param = next(model.parameters(), None)
    model.gate = gate if param is None else gate.to(param.device)
    return model
