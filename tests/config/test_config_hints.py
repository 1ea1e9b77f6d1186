"""What a user who mistyped a config is told (issue 33): "did you mean" for an unknown key
also by initials (``optim.learning_rate`` -> ``lr``), the directory a relative ``data.root``
was resolved against, and a warning when MC-Loss's channels do not split evenly among the
classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chanloss.cli import main
from chanloss.core.validation import did_you_mean

TINY = {
    "model": {"name": "convnet_small", "width": 4, "feature_channels": 20, "pools": 1},
    "data": {"name": "digits"},
    "losses": [{"name": "ce"}, {"name": "mc"}],
    "optim": {"lr": 0.1},
    "epochs": 1,
    "device": "cpu",
}


def one_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("chanloss: error: "), lines
    return lines[0]


def write(path: Path, raw: dict) -> str:
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_did_you_mean_by_spelling_and_by_initials() -> None:
    assert did_you_mean("learning_rate", ["name", "lr", "momentum"]) == " (did you mean 'lr'?)"
    assert did_you_mean("LR", ["name", "lr"]) == " (did you mean 'lr'?)"
    assert did_you_mean("wd", ["lr", "weight_decay"]) == " (did you mean 'weight_decay'?)"
    assert did_you_mean("momentun", ["lr", "momentum"]) == " (did you mean 'momentum'?)"
    assert did_you_mean("colour", ["lr", "weight_decay"]) == ""


def test_optim_learning_rate_gets_did_you_mean_lr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = {**TINY, "optim": {"learning_rate": 0.1}}
    cfg = write(tmp_path / "c.yaml", raw)
    line = one_error(capsys, ["config", "-c", cfg])
    assert "optim.learning_rate: unknown key (did you mean 'lr'?)" in line
    cfg = write(tmp_path / "ok.yaml", TINY)
    line = one_error(capsys, ["config", "-c", cfg, "--set", "optim.wd=0.1"])
    assert "optim.wd: unknown key (did you mean 'weight_decay'?)" in line
    line = one_error(capsys, ["config", "-c", cfg, "--set", "losses.1.a=0.1"])
    assert "loss 'mc' has no parameter 'a'" in line  # one letter: no guess


def test_a_relative_data_root_error_names_the_directory_it_was_resolved_against(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    raw = {
        **TINY,
        "losses": [{"name": "ce"}],
        "data": {"name": "image_folder", "root": "my-images"},
    }
    cfg = write(tmp_path / "c.yaml", raw)
    line = one_error(capsys, ["train", "-c", cfg, "--out", str(tmp_path / "run")])
    assert "root 'my-images' is not a directory" in line
    assert f"a relative root is taken from the current directory, {work}, which gives " in line
    assert str(work / "my-images") in line
    # an absolute root is named as given, without the note
    raw["data"]["root"] = str(tmp_path / "elsewhere")
    line = one_error(capsys, ["train", "-c", write(tmp_path / "a.yaml", raw), "--out", "r"])
    assert "is not a directory" in line and "current directory" not in line


@pytest.mark.parametrize(
    ("channels", "expected"),
    [
        (25, "25 feature channels are not a multiple of the 10 classes, so MC-Loss's channel "
             "groups are unequal (5 classes get 2 channels, 5 get 3); set "
             "model.feature_channels to 20 or 30 for equal groups"),
        (15, "(5 classes get 1 channel, 5 get 2); set model.feature_channels to 20 for equal"),
        (30, None),
    ],
)  # fmt: skip
def test_mc_loss_channels_not_a_multiple_of_the_classes_are_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], channels: int, expected: str | None
) -> None:
    model = {**TINY["model"], "feature_channels": channels}
    cfg = write(tmp_path / "c.yaml", {**TINY, "model": model})
    assert main(["config", "-c", cfg]) == 0  # a warning: the run is valid and trains
    err = capsys.readouterr().err
    if expected is None:
        assert "not a multiple" not in err
    else:
        assert "chanloss: warning: losses.1 (mc): " in err and expected in err
        assert err.count("not a multiple") == 1
