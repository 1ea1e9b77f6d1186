"""``chanloss tune``: every user error is one line with exit status 2 and leaves nothing
behind."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from tiny_config import TUNE_TINY

from chanloss.cli import main
from chanloss.config import load_config

# Digits, the narrowest ConvNet, 3 epochs: about a second per trial on one thread.
TINY = TUNE_TINY


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def user_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("chanloss: error: "), err
    return lines[0]


# -- user errors ---------------------------------------------------------------------------------
def test_tune_user_errors_are_one_line_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path / "tiny.yaml", TINY)
    out = str(tmp_path / "out")
    base = ["tune", "-c", str(cfg), "--out", out]
    assert "--trials: must be an integer >= 1, got '0'" in user_error(
        capsys, [*base, "--trials", "0"]
    )
    assert "--jobs: must be an integer >= 1" in user_error(capsys, [*base, "--jobs", "0"])
    assert "--timeout: expected a duration" in user_error(capsys, [*base, "--timeout", "soon"])
    for bad in ("1", "0", "-2"):
        assert "--folds: must be an integer >= 2" in user_error(capsys, [*base, "--folds", bad])
    line = user_error(capsys, [*base, "--folds", "3", "--confirm-seeds", "2"])
    assert "--folds and --confirm-seeds are two confirmations; choose one" in line
    line = user_error(capsys, [*base, "--folds", "400"])  # digits: ~140 training images a class
    assert "--folds 400: every class needs at least 400 training images; class" in line
    line = user_error(capsys, [*base, "--set", "data.val_fraction=0"])
    assert "tune needs a validation split" in line and "data.val_fraction" in line
    line = user_error(capsys, [*base, "--set", "search.arcface.margin=[0.1,0.5]"])
    assert "the config has no loss 'arcface'" in line
    line = user_error(capsys, [*base, "--set", "search.mc.alfa=[0.1,1]"])
    assert "has no parameter 'alfa'" in line
    line = user_error(capsys, [*base, "--set", "search.mc.beta=[5,1]"])
    assert "empty range [5, 1]" in line
    line = user_error(capsys, [*base, "--set", "losses=[{name: ce}]", "--set", "search={}"])
    assert "nothing to tune" in line
    assert "expected a database URL" in user_error(capsys, [*base, "--storage", "nowhere"])
    assert "holds no study" in user_error(capsys, [*base, "--resume"])
    assert not Path(out).exists()  # refused starts leave nothing behind

    # a storage that holds a study of another config
    import optuna

    from chanloss.tuning import STUDY_NAME, Tuner, open_storage

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    tuner = Tuner(load_config(cfg), tmp_path / "first", 1, storage=storage)
    tuner.open_study()
    assert len(optuna.load_study(study_name=STUDY_NAME, storage=open_storage(storage)).trials) == 3
    line = user_error(capsys, [*base, "--storage", storage, "--set", "epochs=4"])
    assert "holds a study of a different config (differs in epochs)" in line
    line = user_error(capsys, [*base, "--storage", storage, "--set", "search.mc.pool=[max]"])
    assert "different config (differs in search space)" in line
    # a study written before the schema gained a key is still the same config
    study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(storage))
    old = copy.deepcopy(study.user_attrs["chanloss_identity"])
    del old["config"]["eval_every"]
    study.set_user_attr("chanloss_identity", old)
    study.set_user_attr("chanloss_fingerprint", "written-by-an-older-chanloss")
    Tuner(load_config(cfg), tmp_path / "upgraded", 1, storage=storage).open_study()
    # the same config joins it; a study in --out is continued only with --resume
    Tuner(load_config(cfg), tmp_path / "second", 1, storage=storage).open_study()
    (tmp_path / "third").mkdir()
    local = Tuner(load_config(cfg), tmp_path / "third", 1)
    local.open_study()
    line = user_error(capsys, ["tune", "-c", str(cfg), "--out", str(tmp_path / "third")])
    assert "already holds a study (study.db); add --resume" in line
    # one tune per OUT at a time: the directory's lock is held by the first
    from chanloss.run.run_dir import RunDir

    with RunDir(tmp_path / "busy"):
        line = user_error(capsys, ["tune", "-c", str(cfg), "--out", str(tmp_path / "busy")])
    assert "is in use by another chanloss run" in line
