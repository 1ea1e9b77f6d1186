"""tools/config_walk.py: the walk of a config through a command, and its counts."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import yaml
from tiny_config import TINY

TOOL = Path(__file__).resolve().parents[2] / "tools" / "config_walk.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("chanloss_config_walk", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_counts_of_a_walk() -> None:
    tool = load_tool()
    walk = ["a", "b", "a", "c", "b"]
    assert tool.count(walk) == {"stops": 5, "returns": 2, "modules": 3}
    assert tool.count([]) == {"stops": 0, "returns": 0, "modules": 0}


def test_the_walk_of_a_train_goes_through_the_run_floor(tmp_path: Path) -> None:
    tool = load_tool()
    config = tmp_path / "tiny.yaml"
    raw = copy.deepcopy(TINY)
    config.write_text(yaml.safe_dump(raw))
    status, walk = tool.follow(["train", "-c", str(config), "--out", str(tmp_path / "r"), "-q"])
    assert status == 0
    assert walk[:3] == ["chanloss.cli.train", "chanloss.run.session", "chanloss.run.trainer"]
    assert all(a != b for a, b in zip(walk, walk[1:], strict=False))  # repeats collapsed
    assert sys.getprofile() is None
