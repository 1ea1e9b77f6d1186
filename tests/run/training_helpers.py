"""What the trainer tests share: a tiny digits config with changes, two test-only losses (one
that draws from the trainer's generator, one margin head whose logits always say class 3),
reading metrics.csv, and a test accuracy recomputed without the trainer."""

from __future__ import annotations

import copy
import csv
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from tiny_config import TINY
from torch import Tensor

from chanloss.config import load_config
from chanloss.data import build_datasets, to_float_images
from chanloss.losses import LOSSES, Loss
from chanloss.losses.registry import register_loss
from chanloss.models import create_model


def tiny(*overrides: str, **changes: object) -> object:
    raw = copy.deepcopy(TINY)
    raw.update(copy.deepcopy(changes))
    return load_config(raw=raw, overrides=list(overrides))


class RandomDropLoss(Loss):
    """Test-only loss that draws from the trainer's generator (like MC-Loss's channel mask):
    the mean square of the features with a random half of the channels dropped."""

    consumes = "features"

    def __init__(self, *, weight: float = 1.0) -> None:
        super().__init__(weights={"drop": weight})

    def validate(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return inputs, labels

    def terms(self, inputs, labels, *, generator=None):  # noqa: D102
        return super().terms(inputs, labels, generator=generator)

    def compute_terms(self, inputs, labels, *, generator=None):
        assert generator is not None and generator.device == inputs.device
        keep = torch.rand(inputs.shape[1], generator=generator, device=inputs.device) < 0.5
        return {"drop": 1e-3 * (inputs * keep.view(1, -1, 1, 1)).square().mean()}


class ClassThreeLoss(Loss):
    """Test-only 'margin head': its logits() always say class 3."""

    consumes = "embedding"
    provides_logits = True

    def __init__(self, *, num_classes: int) -> None:
        super().__init__(weights={"zero": 1.0})
        self.num_classes = num_classes
        self.scale = torch.nn.Parameter(torch.ones(()))

    def validate(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return inputs, labels

    def compute_terms(self, inputs, labels, **kwargs):
        return {"zero": 0.0 * self.scale * inputs.square().mean()}

    def logits(self, embedding: Tensor) -> Tensor:
        return F.one_hot(
            torch.full_like(embedding[:, 0], 3, dtype=torch.long), self.num_classes
        ).float()


@contextmanager
def registered_test_losses() -> Iterator[None]:
    """The two test-only losses registered as ``test_random_drop`` and ``test_class_three``."""
    register_loss("test_random_drop")(RandomDropLoss)
    register_loss("test_class_three")(ClassThreeLoss)
    try:
        yield
    finally:
        LOSSES.pop("test_random_drop")
        LOSSES.pop("test_class_three")


def read_metrics(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def manual_test_accuracy(run, checkpoint: str = "last.pt") -> float:
    """Accuracy of a saved model on the digits test split, recomputed without the trainer."""
    state = torch.load(run / checkpoint, weights_only=True)
    config = load_config(raw=state["config"])
    bundle = build_datasets("digits", seed=config.seed, val_fraction=config.data.val_fraction)
    model = create_model("convnet_small", num_classes=10, in_channels=1, **config.model.options())
    model.load_state_dict(state["model"])
    model.eval()
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = model((to_float_images(bundle.test.images) - mean) / std).logits
    return (logits.argmax(1) == bundle.test.labels).float().mean().item()


def assert_same_state(a: dict, b: dict, path: str = "") -> None:
    """Equal nested state (dicts, lists, tensors: dtype and every value), naming the path."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{path}.{i}")
    elif isinstance(a, Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, path
