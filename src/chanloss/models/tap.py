"""``FeatureTap``: any ``nn.Module`` classifier as a model of the chanloss contract."""

from __future__ import annotations

import difflib

import torch
from torch import Tensor, nn

from chanloss.models.base import ModelOutput


def _version(t: Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference-mode tensors have no version counter
        return None


class FeatureTap(nn.Module):
    """Wrap a classifier so that it returns ``ModelOutput(logits, features, embedding)``.

    The model contract of docs/design.md ("any ``nn.Module`` backbone can be wrapped by naming
    the layer whose output is ``features``"). During each forward pass a forward hook on the
    sub-module ``layer`` (a dotted path as in ``model.named_modules()``, e.g.
    ``"layer4.1.conv2"``) captures its output as ``features`` (it must be a ``(B, C, H, W)``
    tensor; if the module runs several times, the last call counts). If ``classifier`` names
    the final linear layer, a forward pre-hook takes its input as ``embedding``, else
    ``embedding = GAP(features)``. ``logits`` is the wrapped model's output, which must be a
    ``(B, K)`` tensor (or a ``ModelOutput``, whose ``logits`` are taken).

    With a channel gate (``self.gate``, :func:`~chanloss.models.gate.add_channel_gate`) the
    hook replaces the layer's output ``F`` by ``F * a`` for the rest of the wrapped model;
    ``features`` stays ``F`` and the output carries ``attention = a``.

    Hooks are registered for the duration of one call and removed afterwards, so nothing is
    kept between calls. A captured output that a later in-place operation modifies (e.g. a
    ``BatchNorm`` output followed by ``out += identity`` inside a residual block) is
    rejected: tap the enclosing block instead (``"layer4.1"`` rather than ``"layer4.1.bn2"``).

    ``num_features``, ``embedding_dim`` and ``num_classes`` are guessed from the tapped modules
    (the last ``Conv2d``/``BatchNorm2d`` inside ``layer``, the ``Linear`` classifier) and set
    from the actual tensors after every forward pass; ``infer_dims(input_shape)`` sets them
    with one dry run. There is no
    ``forward_head``: the part of an arbitrary model after ``layer`` is not a module.
    """

    def __init__(self, model: nn.Module, *, layer: str, classifier: str | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"FeatureTap wraps an nn.Module, got {type(model).__name__}")
        self.model = model
        self.layer = layer
        self.classifier_name = classifier
        self.gate: nn.Module | None = None
        tapped = self._find(layer, "layer")
        head = None if classifier is None else self._find(classifier, "classifier")
        self.num_features: int | None = None
        for module in tapped.modules():  # the last conv/BN, a guess until the first forward
            if isinstance(module, nn.Conv2d):
                self.num_features = module.out_channels
            elif isinstance(module, nn.BatchNorm2d):
                self.num_features = module.num_features
        self.embedding_dim: int | None = self.num_features
        self.num_classes: int | None = None
        if isinstance(head, nn.Linear):
            self.embedding_dim = head.in_features
            self.num_classes = head.out_features

    def _find(self, name: object, what: str) -> nn.Module:
        modules = dict(self.model.named_modules())
        if isinstance(name, str) and name and name in modules:
            return modules[name]
        names = [n for n in modules if n]
        hint = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
        hint += [n for n in names if "." not in n and n not in hint]
        shown = ", ".join(map(repr, hint[:12]))
        raise ValueError(
            f"FeatureTap: {what} {name!r} is not a sub-module of {type(self.model).__name__}; "
            f"expected a dotted name from model.named_modules(), e.g. {shown} "
            f"({len(names)} modules in total)"
        )

    @property
    def feature_layer(self) -> nn.Module:
        """The tapped sub-module."""
        return self._find(self.layer, "layer")

    @property
    def classifier(self) -> nn.Module | None:
        """The module named by ``classifier`` (its input is the embedding), or ``None``."""
        return (
            None if self.classifier_name is None else self._find(self.classifier_name, "classifier")
        )

    def forward(self, x: Tensor) -> ModelOutput:
        store: dict[str, object] = {}

        def take_features(module: nn.Module, args: tuple, output: object) -> object:
            store["features"] = output
            if isinstance(output, Tensor):
                store["version"] = _version(output)
            if self.gate is None:
                return None
            gated, store["attention"] = self.gate(output)
            return gated

        def take_embedding(module: nn.Module, args: tuple) -> None:
            store["embedding"] = args[0] if args else None

        handles = [self.feature_layer.register_forward_hook(take_features)]
        head = self.classifier
        if head is not None:
            handles.append(head.register_forward_pre_hook(take_embedding))
        try:
            logits = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        if isinstance(logits, ModelOutput):
            logits = logits.logits
        features = self._check_features(store, x)
        embedding = self._check_embedding(store, features)
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(
                f"FeatureTap: the wrapped {type(self.model).__name__} must return a logits tensor "
                f"of shape (B, K) = ({x.shape[0]}, K), got {got}"
            )
        self.num_features = features.shape[1]
        self.embedding_dim = embedding.shape[1]
        self.num_classes = logits.shape[1]
        attention = store.get("attention")
        return ModelOutput(logits, features, embedding, attention)  # type: ignore[arg-type]

    def _check_features(self, store: dict[str, object], x: Tensor) -> Tensor:
        if "features" not in store:
            raise ValueError(f"FeatureTap: layer {self.layer!r} was not called in the forward pass")
        features = store["features"]
        if not isinstance(features, Tensor) or features.dim() != 4:
            got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(
                f"FeatureTap: layer {self.layer!r} must output a (B, C, H, W) feature map, got {got}"
            )
        if features.shape[0] != x.shape[0]:
            raise ValueError(
                f"FeatureTap: layer {self.layer!r} output has batch size {features.shape[0]}, "
                f"expected {x.shape[0]}"
            )
        if store["version"] is not None and _version(features) != store["version"]:
            raise ValueError(
                f"FeatureTap: the output of layer {self.layer!r} was modified in place later in "
                "the forward pass (e.g. by '+=' or ReLU(inplace=True)); tap the enclosing block"
            )
        return features

    def _check_embedding(self, store: dict[str, object], features: Tensor) -> Tensor:
        if self.classifier_name is None:
            return features.mean(dim=(2, 3))
        embedding = store.get("embedding")
        if embedding is None:
            raise ValueError(
                f"FeatureTap: classifier {self.classifier_name!r} was not called in the forward pass"
            )
        if not isinstance(embedding, Tensor) or embedding.dim() != 2:
            got = tuple(embedding.shape) if isinstance(embedding, Tensor) else type(embedding)
            raise ValueError(
                f"FeatureTap: the input of classifier {self.classifier_name!r} must be a (B, D) "
                f"embedding, got {got}"
            )
        return embedding

    def forward_features(self, x: Tensor) -> Tensor:
        """The tapped feature map (runs the whole model)."""
        return self(x).features

    @torch.no_grad()
    def infer_dims(self, input_shape: tuple[int, ...]) -> dict[str, int]:
        """Run one eval-mode pass on zeros of ``input_shape`` (with batch) and return the sizes."""
        was_training = self.training
        param = next(self.model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        self.eval()
        try:
            self(torch.zeros(input_shape, device=device))
        finally:
            self.train(was_training)
        return {
            "num_features": self.num_features,
            "embedding_dim": self.embedding_dim,
            "num_classes": self.num_classes,
        }
