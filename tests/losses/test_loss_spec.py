"""The loss spec: built once when a loss is registered; the config schema, the search, the
builders and the reference read it (a new loss is one new file in losses/)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from tiny_config import TINY

from chanloss.config import ConfigError, load_config
from chanloss.config.search import resolve_space
from chanloss.losses import LOSSES, Loss, MCLoss, loss_spec, register_loss
from chanloss.losses import registry as loss_registry
from chanloss.losses.search import LogUniform
from chanloss.losses.spec import REQUIRED, LossSpec
from chanloss.run.session import train

SRC = Path(__file__).resolve().parents[2] / "src" / "chanloss"


def test_the_mc_spec_names_context_exclusive_parameters_and_search_space():
    spec = loss_spec("mc")
    assert spec.cls is MCLoss and spec.context == ("num_classes", "num_channels")
    assert spec.exclusive == {"keep_ratio": "drop"}
    assert spec.search_space == MCLoss.search_space
    assert spec.takes_generator
    assert spec.params["num_classes"].required and spec.params["alpha"].default == 1.5
    assert "keep_ratio" not in spec.defaults({"drop": 2})
    filled = spec.defaults({})
    assert type(filled["keep_ratio"]) is float and filled["keep_ratio"] == pytest.approx(2 / 3)
    assert "num_classes" not in filled and "weight" not in filled
    assert not loss_spec("ce").takes_generator


def test_spec_errors_name_the_key_and_the_loss():
    with pytest.raises(
        ValueError, match=r"loss 'mc' has no parameter 'alpah' \(did you mean 'alpha'"
    ):
        loss_spec("mc").check_keys({"alpah": 1.0})
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        loss_spec("nope")

    class Bad(Loss):
        exclusive_params = {"a": "b"}

        def __init__(self, *, a: int = 1) -> None:
            super().__init__(weights={"x": 1.0})

    with pytest.raises(ValueError, match="exclusive_params names 'a'/'b'"):
        LossSpec.of("bad", Bad)


class ScaledSquareLoss(Loss):
    """Test-only loss registered the way a new file in losses/ would be: the mean square of
    the embedding times ``scale``."""

    consumes = "embedding"
    search_space = {"scale": LogUniform(1e-3, 1.0)}

    def __init__(self, *, embedding_dim: int, scale: float = 0.01, mode: str = "mean") -> None:
        super().__init__(weights={"square": 1.0})
        self.embedding_dim, self.scale = embedding_dim, scale

    def validate(self, inputs, labels):
        return inputs, labels

    def compute_terms(self, inputs, labels, **kwargs):
        return {"square": self.scale * inputs.square().mean()}


@pytest.fixture
def registered():
    register_loss("square_test")(ScaledSquareLoss)
    yield
    LOSSES.pop("square_test", None)
    loss_registry._SPECS.pop("square_test", None)


def test_a_registered_loss_is_read_by_config_search_and_builders(registered, tmp_path):
    raw = copy.deepcopy(TINY)
    raw["losses"] = [{"name": "ce"}, {"name": "square_test", "weight": 0.5}]
    config = load_config(raw=raw)
    assert config.losses[1].params() == {"scale": 0.01, "mode": "mean"}  # defaults stored
    with pytest.raises(ConfigError, match="has no parameter 'scal' \\(did you mean 'scale'"):
        load_config(raw=raw, overrides=["losses.1.scal=2"])
    dims, _ = resolve_space(config)
    assert [d.name for d in dims if d.name.startswith("square_test")] == ["square_test.scale"]
    result = train(config, tmp_path / "run", verbose=0)
    assert "square_test_square" in result.metrics()[0]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["config"]["losses"][1]["scale"] == 0.01
    assert loss_spec("square_test").params["embedding_dim"].default is REQUIRED


def test_only_the_spec_reads_a_loss_signature():
    readers = set()
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        if re.search(r"inspect\.signature\((cls|loss|LOSSES|loss_class)\b", text):
            readers.add(path.relative_to(SRC).as_posix())
    assert readers == {"losses/spec.py"}
