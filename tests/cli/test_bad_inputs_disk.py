"""The bad-input corpus, output directory: an unwritable or full run directory is one line
(exit status 2) before training starts, and a disk that fills up mid-run keeps the previous
checkpoint."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from bad_input_helpers import Ctx, _tree, finish_one_epoch_run

from chanloss.cli import main
from chanloss.run.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished one-epoch run (config.yaml, last.pt, best.pt, metrics.csv, summary.json)."""
    return finish_one_epoch_run(tmp_path_factory.mktemp("base"))


# -- the output directory: unwritable, full ----------------------------------------------------
# Tests run as root, where a read-only mode does not stop writes: the failures are simulated.
def _fail(err: int, *, after: int = 0) -> Callable[..., None]:
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(err, os.strerror(err))
        real(fd)

    return fsync


@pytest.mark.parametrize(
    ("patch", "reason"),
    [("mkstemp", "Permission denied"), ("fsync", "No space left on device")],
)
def test_an_unwritable_run_directory_is_reported_before_training(
    patch, reason, finished_run, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg = Ctx(tmp_path, run).config()
    before = _tree(tmp_path)
    if patch == "mkstemp":
        monkeypatch.setattr(
            tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(PermissionError(13, reason))
        )
    else:
        monkeypatch.setattr(os, "fsync", _fail(errno.ENOSPC))
    for out, argv in (
        (tmp_path / "new", ["train", "-c", cfg, "--out", str(tmp_path / "new")]),
        (run, ["train", "--out", str(run), "--resume"]),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        expected = f"cannot write in the run directory {out} ({reason}); expected a writable"
        assert len(err) == 1 and expected in err[0], err
    assert _tree(tmp_path) == before  # the new directory was removed again, the run untouched


def test_too_little_free_space_is_reported_before_training(tmp_path, monkeypatch, capsys):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    cfg = Ctx(tmp_path, tmp_path).config()
    assert main(["train", "-c", cfg, "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "not enough free space in the run directory" in err[0], err
    assert "0.0 MiB free, expected at least" in err[0]
    assert not (tmp_path / "new").exists()


def test_a_disk_that_fills_up_mid_run_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    # fsync calls: the probe, last.pt of epoch 1, then last.pt of epoch 2 fails
    monkeypatch.setattr(os, "fsync", _fail(errno.ENOSPC, after=2))
    run = tmp_path / "run"
    cfg = Ctx(tmp_path, run).config(epochs=3)
    assert main(["train", "-c", cfg, "--out", str(run), "-q"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"chanloss: error: cannot write checkpoint {run / 'last.pt'}: No space left on device; "
        "the previous last.pt (if any) is unchanged"
    ]
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert main(["train", "--out", str(run), "--resume", "-q"]) == 0  # space is back
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
