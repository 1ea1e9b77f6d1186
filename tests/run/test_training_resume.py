"""The trainer on tiny digits runs: resume after an interruption is bit-identical; resume
errors; checkpoints are checked and written atomically; RNG states round-trip."""

from __future__ import annotations

import filecmp
import json
import random

import numpy as np
import pytest
import torch
from training_helpers import assert_same_state, read_metrics, registered_test_losses, tiny

from chanloss.config import ConfigError
from chanloss.run.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from chanloss.run.session import train


@pytest.fixture
def test_losses():
    with registered_test_losses():
        yield


# -- exact resume ------------------------------------------------------------------------------
def resumable(*overrides: str) -> object:
    return tiny(
        "data.val_fraction=0.2",
        "data.augment.crop_padding=1",
        "data.augment.hflip=true",
        "schedule.warmup_epochs=1",
        "grad_clip=1.0",
        *overrides,
        losses=[
            {"name": "ce"},
            {"name": "cc", "placement": "branch", "weight": 0.5, "reduction": 4, "lr": 0.02},
            {"name": "test_random_drop"},
        ],
    )


@pytest.mark.parametrize("interruption", ["epochs", "stop_after"])
def test_resume_after_an_interruption_is_bit_identical(tmp_path, test_losses, interruption):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    if interruption == "epochs":  # run 1 epoch, then extend to 3 (step schedule: same lr)
        config = resumable("epochs=3", "schedule.name=step", "schedule.milestones=[2]")
        train(
            resumable("epochs=1", "schedule.name=step", "schedule.milestones=[2]"),
            resumed,
            verbose=0,
        )
    else:  # stopped after epoch 1 of a 3-epoch cosine run
        config = resumable("epochs=3", "schedule.name=cosine")
        train(config, resumed, stop_after=1, verbose=0)
        assert not json.loads((resumed / "summary.json").read_text())["finished"]
    assert load_checkpoint(resumed / "last.pt")["epoch"] == 1
    train(config, resumed, resume=True, verbose=0)
    train(config, straight, verbose=0)

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    for key in ("model", "losses", "optimizer", "scheduler", "scaler", "rng", "best", "epoch"):
        assert_same_state(a[key], b[key], key)
    assert a["global_step"] == b["global_step"] == 3 * (1150 // 128)
    assert a["losses"][1]  # CC-Loss's attention parameters were saved and trained
    timing = ("epoch_time", "samples_per_s")
    if interruption == "epochs":  # the 1-epoch run was tested at its end; the straight one not
        assert a["history"][0]["test_acc"] is None and b["history"][0]["test_acc"] is not None
        b["history"][0]["test_acc"] = None
    strip = [{k: v for k, v in r.items() if k not in timing} for r in a["history"]]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in b["history"]]
    assert len(read_metrics(resumed)) == 3
    assert filecmp.cmp(straight / "best.pt", resumed / "best.pt", shallow=False) or (
        load_checkpoint(straight / "best.pt")["epoch"]
        == load_checkpoint(resumed / "best.pt")["epoch"]
    )


def test_resume_errors(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"cannot resume: .*last.pt does not exist"):
        train(tiny(), run, resume=True, verbose=0)
    train(tiny(), run, verbose=0)
    with pytest.raises(ConfigError, match=r"already holds a run \(last.pt\); use --resume"):
        train(tiny(), run, verbose=0)
    with pytest.raises(
        CheckpointError,
        match=r"last.pt was trained with model convnet_small \{'width': 4\}, but the config "
        r"has model convnet_small \{'width': 8\}$",  # only what differs, not every default
    ):
        train(tiny("model.width=8"), run, resume=True, verbose=0)
    with pytest.raises(
        CheckpointError, match=r"trained with losses \[ce\], but the config has losses \[ce, cc\]"
    ):
        train(tiny(losses=[{"name": "ce"}, {"name": "cc"}]), run, resume=True, verbose=0)
    # a finished run resumed with the same epochs does nothing more
    before = (run / "last.pt").stat().st_mtime_ns
    assert train(tiny(), run, resume=True, verbose=0)["epochs"] == 1
    assert (run / "last.pt").stat().st_mtime_ns == before


def test_checkpoint_files_are_checked_and_written_atomically(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt is not a readable chanloss checkpoint"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(CheckpointError, match="other.pt is not a chanloss checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")

    path = tmp_path / "ck.pt"
    save_checkpoint({"x": torch.arange(3)}, path)
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be pickled
        save_checkpoint({"x": lambda: 0}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(3))  # the old file survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "garbage.pt", "other.pt"]


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(5)
    state = capture_rng(torch.device("cpu"), gen)
    first = (
        torch.rand(3),
        np.random.rand(3),  # noqa: NPY002
        random.random(),
        torch.rand(3, generator=gen),
    )
    save_checkpoint({"rng": state}, tmp_path / "rng.pt")
    restore_rng(load_checkpoint(tmp_path / "rng.pt")["rng"], torch.device("cpu"), gen)
    second = (
        torch.rand(3),
        np.random.rand(3),  # noqa: NPY002
        random.random(),
        torch.rand(3, generator=gen),
    )
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2] == second[2] and torch.equal(first[3], second[3])
