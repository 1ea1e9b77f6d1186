"""The bad-input corpus, library surface: every loss constructor and call rejects a bad
argument or input with a one-line ``ValueError`` naming what was expected."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import pytest
import torch

from chanloss.losses import LOSSES, create_loss

# -- the library surface: every loss constructor and call ------------------------------------
CONTEXT = {"num_classes": 5, "num_channels": 10, "embedding_dim": 6}
# One bad constructor argument per loss: (parameter, bad value, expected in the message).
BAD_PARAMS: dict[str, tuple[str, object, str]] = {
    "arcface": ("margin", -0.5, "margin must be"),
    "cc": ("reduction", 0, "reduction must be"),
    "center": ("embedding_dim", "6", "embedding_dim must be an integer, got '6'"),
    "competing_ratio": ("beta", float("nan"), "beta must be a finite number"),
    "cosface": ("scale", 0.0, "scale must be"),
    "ce": ("weight", "one", "weight must be a real number, got 'one'"),
    "em_softmax": ("num_classifiers", 0, "num_classifiers must be"),
    "focal": ("gamma", -1.0, "gamma must be"),
    "label_smoothing": ("smoothing", 1.5, "smoothing must be"),
    "lgm": ("covariance", "full-ish", "covariance must be one of"),
    "lsoftmax": ("margin", 0, "margin must be"),
    "mc": ("pool", "median", "pool must be one of"),
    "sphereface": ("margin", 2.5, "margin must be an integer"),
}


def _input_shape(name: str) -> tuple[int, ...]:
    consumes = LOSSES[name].consumes
    if consumes == "features":
        return (4, CONTEXT["num_channels"], 3, 3)
    if consumes == "embedding":
        return (4, CONTEXT["embedding_dim"])
    if consumes == "attention":  # CC-Loss's gate placement: the gate's (B, C) attention
        return (4, CONTEXT["num_channels"])
    return (4, CONTEXT["num_classes"])


def test_the_corpus_covers_every_registered_loss():
    assert set(BAD_PARAMS) == set(LOSSES) - {n for n in LOSSES if n.startswith("test_")}


@pytest.mark.parametrize("name", sorted(BAD_PARAMS))
def test_loss_constructor_rejects_a_bad_argument(name):
    param, value, message = BAD_PARAMS[name]
    assert param in inspect.signature(LOSSES[name].__init__).parameters
    with pytest.raises(ValueError) as info:
        create_loss(name, context=CONTEXT, **{param: value})
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=f"loss '{name}' has no parameter 'nonsense'"):
        create_loss(name, context=CONTEXT, nonsense=1)


BAD_CALLS: dict[str, Callable[[tuple[int, ...]], tuple[object, object, str]]] = {
    # (inputs, labels, expected in the message) for an input shape
    "wrong-rank": lambda s: (torch.randn(*s, 2), torch.zeros(4, dtype=torch.long), "dimensions"),
    "wrong-type": lambda s: (np.zeros(s, np.float32), torch.zeros(4, dtype=torch.long), "Tensor"),
    "integer-input": lambda s: (
        torch.zeros(s, dtype=torch.long),
        torch.zeros(4, dtype=torch.long),
        "floating-point",
    ),
    "label-out-of-range": lambda s: (
        torch.randn(s),
        torch.tensor([0, 1, 2, CONTEXT["num_classes"]]),
        f"labels must be in [0, {CONTEXT['num_classes']}), got a label {CONTEXT['num_classes']}",
    ),
    "negative-label": lambda s: (
        torch.randn(s),
        torch.tensor([0, -1, 2, 3]),
        "labels must be in [0, 5), got a label -1",
    ),
    "float-labels": lambda s: (torch.randn(s), torch.zeros(4), "labels must be an integer tensor"),
    "labels-wrong-length": lambda s: (
        torch.randn(s),
        torch.zeros(3, dtype=torch.long),
        "labels must have shape (4,) to match the batch, got (3,)",
    ),
    "empty-batch": lambda s: (
        torch.randn(0, *s[1:]),
        torch.zeros(0, dtype=torch.long),
        "empty batch",
    ),
}


@pytest.mark.parametrize("call", list(BAD_CALLS))
@pytest.mark.parametrize("name", sorted(BAD_PARAMS))
def test_loss_call_rejects_bad_inputs(name, call):
    loss = create_loss(name, context=CONTEXT)
    inputs, labels, message = BAD_CALLS[call](_input_shape(name))
    if name == "cc" and "labels must be in" in message:
        # CC-Loss has no class count: any label >= 0 is a class; a negative one is an error
        if call == "label-out-of-range":
            assert torch.isfinite(loss(inputs, labels))
            return
        message = "labels must be class indices >= 0, got a label -1"
    with pytest.raises(ValueError) as info:
        loss(inputs, labels)
    assert message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_loss_call_rejects_non_finite_input_when_asked():
    for name in sorted(BAD_PARAMS):
        loss = create_loss(name, context=CONTEXT, check_finite=True)
        x = torch.randn(_input_shape(name))
        x.view(-1)[3] = float("nan")
        with pytest.raises(ValueError, match=r"must be finite: found 1 NaN/inf values"):
            loss(x, torch.tensor([0, 1, 2, 3]))
