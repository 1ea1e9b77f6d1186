"""Errors that the config alone decides: reported by ``chanloss config`` and by ``train``
before any data is loaded, naming the key to change; YAML errors with file, line and column;
a bad ``--set`` value blamed on the ``--set``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

from chanloss.cli import main
from chanloss.config import ConfigError, load_config
from chanloss.run.builders import data_shape, preflight

MC_FEW = {
    "model": {"name": "convnet_small", "width": 4, "feature_channels": 5},
    "data": {"name": "digits"},
    "losses": [{"name": "ce"}, {"name": "mc"}],
    "epochs": 1,
    "device": "cpu",
}


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def one_error_line(capsys, argv: list[str]) -> tuple[str, str]:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [x for x in captured.err.splitlines() if not x.startswith("chanloss: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("chanloss: error: "), captured.err
    return lines[0], captured.out


def test_config_and_train_name_the_feature_channels_before_loading_data(tmp_path, capsys):
    path = write(tmp_path / "mc.yaml", MC_FEW)
    line, out = one_error_line(capsys, ["config", "-c", str(path)])
    assert "losses.1 (mc): num_channels must be >= num_classes" in line
    assert "model.feature_channels is 5 and the data has 10 classes" in line
    assert "set model.feature_channels to at least 10" in line and out == ""
    run = tmp_path / "run"
    line, out = one_error_line(capsys, ["train", "-c", str(path), "--out", str(run)])
    assert "set model.feature_channels to at least 10" in line
    assert "loading data" not in out and not run.exists()  # nothing was loaded or written
    path = write(tmp_path / "ok.yaml", {**MC_FEW, "model": {**MC_FEW["model"], "width": 4}})
    assert main(["config", "-c", str(path), "--set", "model.feature_channels=20"]) == 0


def test_the_class_count_of_an_image_folder_comes_from_its_train_folders(tmp_path, capsys):
    for name in ("a", "b", "c"):
        (tmp_path / "imgs" / "train" / name).mkdir(parents=True)
        Image.new("L", (6, 6)).save(tmp_path / "imgs" / "train" / name / "0.png")
    raw = {**MC_FEW, "data": {"name": "image_folder", "root": str(tmp_path / "imgs")}}
    raw["model"] = {**MC_FEW["model"], "feature_channels": 2}
    config = load_config(raw=raw)
    assert data_shape(config) == (3, 3)
    with pytest.raises(ConfigError, match="model.feature_channels is 2 and the data has 3 classes"):
        preflight(config)
    line, _ = one_error_line(capsys, ["compare", "-c", str(write(tmp_path / "f.yaml", raw))])
    assert "set model.feature_channels to at least 3" in line
    assert not (tmp_path / "runs").exists() and not Path("runs/compare/f").exists()
    # a folder that is not there is left to loading, which names it
    missing = load_config(raw={**raw, "data": {"name": "image_folder", "root": str(tmp_path)}})
    assert data_shape(missing) is None
    preflight(missing)


def test_a_broken_yaml_file_is_named_with_its_line_and_column(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  name: convnet_small\n  width: [4\ndata: {name: digits}\n")
    line, _ = one_error_line(capsys, ["config", "-c", str(path)])
    assert f"{path}, line 4, column 5: invalid YAML: while parsing a flow sequence" in line
    assert "(from line 3, column 10)" in line and "<unicode string>" not in line


def test_a_bad_set_value_is_blamed_on_the_set_and_a_bad_file_value_on_the_file(tmp_path, capsys):
    good = {**MC_FEW, "model": {**MC_FEW["model"], "feature_channels": 20}}
    path = write(tmp_path / "c.yaml", good)
    cases = {
        "optim.lr=fast": "chanloss: error: --set optim.lr=fast: optim.lr: Input should be a valid",
        "model.widht=4": "chanloss: error: --set model.widht=4: model: model 'convnet_small' has "
        "no option 'widht' (did you mean 'width'?)",
        "model.feature_channels=x": "chanloss: error: --set model.feature_channels=x: model: "
        "feature_channels must be an integer",
        "model.feature_channels=5": "chanloss: error: --set model.feature_channels=5: losses.1 "
        "(mc): num_channels must be >= num_classes",
    }
    for item, expected in cases.items():
        line, _ = one_error_line(capsys, ["config", "-c", str(path), "--set", item])
        assert line.startswith(expected), line
        assert str(path) not in line
    # the file's own mistake stays the file's, whatever else --set changes
    bad = write(tmp_path / "bad.yaml", {**good, "model": {**good["model"], "widht": 3}})
    line, _ = one_error_line(capsys, ["config", "-c", str(bad), "--set", "model.width=8"])
    assert line.startswith(f"chanloss: error: {bad}: model: model 'convnet_small' has no option")
    line, _ = one_error_line(capsys, ["config", "-c", str(bad), "--set", "optim.lr=fast"])
    assert line.startswith(f"chanloss: error: {bad}: ") and "--set optim.lr=fast: optim.lr" in line
