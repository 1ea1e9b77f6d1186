"""Notes and warnings printed once per command (chanloss.core.messages), in one line, also when the
runs of a command train in worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import yaml

from chanloss.cli import main
from chanloss.core import messages


def test_once_prints_a_text_once_per_command_scope_and_every_time_outside(capsys):
    messages.once("note a")
    messages.once("note a")
    assert capsys.readouterr().out == "note a\nnote a\n"  # plain library use: no memory
    with messages.command_scope():
        assert messages.once("note a") is True
        assert messages.once("note a") is False
        assert messages.once("note b, trial 1", key="b") is True
        assert messages.once("note b, trial 2", key="b") is False
    with messages.command_scope():  # a new command prints it again
        messages.once("note a")
    assert capsys.readouterr().out == "note a\nnote b, trial 1\nnote a\n"
    assert messages.ENV not in os.environ


def test_a_warning_is_one_line_without_its_source_and_printed_once(capsys):
    with messages.command_scope():
        for _ in range(3):
            with warnings.catch_warnings():  # resets Python's own once-per-location memory
                warnings.warn("the width is raised to 4\n   (set min_hidden=1)", stacklevel=1)
        warnings.warn("a deprecated option", DeprecationWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err == (
        "chanloss: warning: the width is raised to 4 (set min_hidden=1)\n"
        "chanloss: warning: DeprecationWarning: a deprecated option\n"
    )
    shown = warnings.showwarning
    assert getattr(shown, "__name__", "") != "_show_warning"  # restored after the command


def test_child_processes_of_a_command_share_what_was_printed(tmp_path):
    child = (
        "import warnings, chanloss\n"
        "from chanloss.core.messages import once\n"
        "once('the note')\n"
        "warnings.warn('the warning')\n"
    )
    with messages.command_scope():
        messages.once("the note")  # the parent printed it: no child prints it again
        runs = [
            subprocess.run(
                [sys.executable, "-c", child],
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "PYTHONPATH": str(Path(messages.__file__).parents[2])},
                check=True,
            )
            for _ in range(3)
        ]
    assert [r.stdout for r in runs] == ["", "", ""]
    errs = [r.stderr for r in runs]
    assert errs == ["chanloss: warning: the warning\n", "", ""]


def _digit_folder(root: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split, start, count in (("train", 0, 6), ("test", 100, 2)):
        for label in range(3):
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            images = digits.images[digits.target == label][start : start + count]
            for i, image in enumerate(images):
                Image.fromarray((image * 15).astype("uint8")).save(folder / f"{i}.png")


def test_compare_with_worker_processes_prints_the_data_note_and_a_warning_once(tmp_path, capfd):
    _digit_folder(tmp_path / "images")
    config = {
        "model": {"name": "convnet_small", "width": 4, "feature_channels": 6},
        "data": {"name": "image_folder", "root": str(tmp_path / "images")},
        # 6 channels // reduction 16 = 0 units, below min_hidden: the side branch warns at every build
        "losses": [{"name": "ce"}, {"name": "cc", "placement": "branch", "reduction": 16}],
        "epochs": 1,
        "batch_size": 18,
        "device": "cpu",
    }
    path = tmp_path / "cc.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = ["compare", "-c", str(path), "--seeds", "2", "--jobs", "2", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    captured = capfd.readouterr()
    assert captured.out.count("image_size auto -> 8x8") == 1, captured.out
    warned = [line for line in captured.err.splitlines() if "min_hidden" in line]
    assert len(warned) == 1 and warned[0].startswith("chanloss: warning: CCLoss:"), captured.err
    assert "warnings.warn(" not in captured.err and "UserWarning" not in captured.err
