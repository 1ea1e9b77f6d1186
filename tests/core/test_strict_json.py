"""JSON files written by chanloss hold no NaN or Infinity (not JSON: jq and a browser's
``JSON.parse`` reject them): a non-finite number is written as ``null`` (issue 33)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny_config import TUNE_TINY as TINY

from chanloss.cli import main
from chanloss.core.atomic import json_text, write_json


def strict_load(path: Path) -> Any:
    """``json.loads`` as a strict reader: NaN, Infinity and -Infinity are refused."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path}: {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_write_json_writes_non_finite_numbers_as_null(tmp_path: Path) -> None:
    data = {"a": math.nan, "b": [1.5, math.inf, (-math.inf, 2)], "c": {"d": {"e": math.nan}}}
    write_json(tmp_path / "x.json", data)
    assert strict_load(tmp_path / "x.json") == {
        "a": None,
        "b": [1.5, None, [None, 2]],
        "c": {"d": {"e": None}},
    }
    # what ``default`` converts is made finite too; an unknown type without it is an error
    assert json.loads(json_text({"p": Path("x")}, default=str)) == {"p": "x"}
    assert json_text({"v": Wrapped()}, indent=None, default=lambda w: [math.nan]) == '{"v": [null]}'
    with pytest.raises(TypeError, match="Wrapped"):
        json_text({"v": Wrapped()})


class Wrapped:
    pass


def test_tune_json_is_strict_json_when_a_gain_has_no_standard_error(tmp_path: Path) -> None:
    # --folds 2 with one test run per side: the test gain's standard error is undefined (was
    # written as NaN)
    raw = {**TINY, "epochs": 2, "search": {**TINY["search"], "optim": {"lr": [0.05, 0.3]}}}
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "tune"
    assert main(["tune", "-c", str(cfg), "--out", str(out), "--trials", "3", "--folds", "2"]) == 0
    summary = strict_load(out / "tune.json")
    assert summary["confirmation"]["test"]["gain"]["se"] is None
    for path in out.rglob("*.json"):  # every trial's and confirmation run's files too
        strict_load(path)
