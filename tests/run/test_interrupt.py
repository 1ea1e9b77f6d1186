"""Interrupted runs: SIGKILL at random points (also mid-checkpoint-write) never leaves an
unreadable checkpoint and ``--resume`` ends with the weights of an uninterrupted run; Ctrl-C
finishes the step, writes last.pt, prints the exact resume command and exits with 130."""

from __future__ import annotations

import copy
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ctrl_c import CtrlCLoss
from training_helpers import assert_same_state as same

from chanloss.cli import main
from chanloss.config import load_config
from chanloss.run.checkpoint import SLOW_WRITE_ENV, load_checkpoint
from chanloss.run.session import train
from chanloss.run.trainer import TrainingInterrupted

ROOT = Path(__file__).resolve().parents[2]
# Tiny and deterministic; random crops and flips so that the RNG state matters on resume.
TINY = {
    "model": {"name": "convnet_small", "width": 4, "feature_channels": 20, "pools": 1},
    "data": {"name": "digits", "augment": {"crop_padding": 1, "hflip": True}},
    "losses": [{"name": "ce"}, {"name": "cc", "reduction": 4, "weight": 0.1}],
    "optim": {"lr": 0.05},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "epochs": 8,
    "batch_size": 128,
    "device": "cpu",
}
COMPARED = ("model", "losses", "optimizer", "scheduler", "rng", "epoch", "global_step")


def assert_same_run(a: Path, b: Path) -> None:
    x, y = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    for key in COMPARED:
        same(x[key], y[key], key)


def env() -> dict[str, str]:
    # one thread, as in the test process (conftest), so that results are bit-identical
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def checkpoints_are_readable(run: Path) -> list[str]:
    """Every ``*.pt`` in the run loads; returns the names of stray temporary files."""
    for path in run.glob("*.pt"):
        state = load_checkpoint(path)
        assert state["epoch"] >= 0 and "model" in state, path
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))


def wait_for(condition, process: subprocess.Popen, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended early: {process.communicate()}"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.002)


def sigkill(run: Path, command: list[str], plan: str, rng: random.Random) -> list[str]:
    """Start ``command`` with slow checkpoint writes, SIGKILL it at a random moment after it
    wrote a new checkpoint (``plan="random"``) or inside a checkpoint write (``"mid-write"``);
    returns the stray temporary files it left."""
    before = load_checkpoint(run / "last.pt")["epoch"] if (run / "last.pt").exists() else -1
    slow = {**env(), SLOW_WRITE_ENV: "0.15"}
    proc = subprocess.Popen(command, env=slow, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(
            lambda: (
                (run / "last.pt").exists()
                and (run / "last.pt").stat().st_size > 0
                and load_checkpoint(run / "last.pt")["epoch"] > before
            ),
            proc,
        )
        if plan == "random":
            time.sleep(rng.uniform(0.0, 0.4))
        else:
            wait_for(lambda: any(run.glob(".last.pt.*.tmp")), proc)
            time.sleep(rng.uniform(0.0, 0.1))  # inside the 0.15 s pause of the write
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=180)
    return checkpoints_are_readable(run)


def test_kills_and_ctrl_c_then_resume_give_the_weights_of_an_uninterrupted_run(tmp_path):
    """``python -m chanloss train`` is SIGKILLed three times (at random moments and inside a
    checkpoint write), resumed each time, then stopped with Ctrl-C, whose message holds the
    exact resume command; every checkpoint on disk stays readable, and the finished run has the
    bits of an uninterrupted one."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    straight, run = tmp_path / "straight", tmp_path / "run"
    train(load_config(cfg), straight, verbose=0)
    command = [sys.executable, "-m", "chanloss", "train", "-c", str(cfg), "--out", str(run)]

    rng = random.Random(1234)
    sigkill(run, [*command, "-q"], "random", rng)
    stray = sigkill(run, [*command, "-q", "--resume"], "mid-write", rng)
    assert any(name.startswith(".last.pt.") for name in stray), stray  # killed mid-write
    sigkill(run, [*command, "-q", "--resume"], "random", rng)
    assert load_checkpoint(run / "last.pt")["epoch"] < TINY["epochs"]

    proc = subprocess.Popen(
        [*command, "--resume"], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        while line.startswith(("resuming ", "loading data", "loaded ")):
            line = proc.stdout.readline()
        assert line.startswith("epoch "), line  # an epoch went by: training is under way
        time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("chanloss: interrupted "), err
    assert f"; saved {run / 'last.pt'}; resume with: " in last
    resume = shlex.split(last.split("; resume with: ", 1)[1])
    assert resume == [sys.executable, "-m", "chanloss", "train", "--out", str(run), "--resume"]
    assert checkpoints_are_readable(run) == []  # the resumed runs removed the stray files

    # run that command's arguments here (same thread count, so the same bits; start-up is slow)
    assert main(resume[3:]) == 0
    assert_same_run(straight, run)


def ctrl_c_config(*at: int):
    """The 3-epoch config with the Ctrl-C loss, pressing Ctrl-C at the global steps ``at``."""
    CtrlCLoss.AT = list(at)
    raw = copy.deepcopy(TINY)
    raw.update(epochs=3)
    raw["losses"] = [*raw["losses"], {"name": "test_ctrl_c"}]
    return load_config(raw=raw)


def test_ctrl_c_finishes_the_step_and_resume_continues_from_it_exactly(tmp_path, ctrl_c_loss):
    steps = 1437 // 128
    straight, run = tmp_path / "straight", tmp_path / "run"
    train(ctrl_c_config(), straight, verbose=0)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background
    with pytest.raises(TrainingInterrupted) as info:
        train(ctrl_c_config(steps + 4), run, verbose=0)
    assert str(info.value) == f"interrupted at epoch 2, step 5/{steps}; saved {run / 'last.pt'}"
    assert info.value.out_dir == run
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 1 and state["global_step"] == steps + 5
    assert state["partial"]["step"] == 5
    assert signal.getsignal(signal.SIGINT) is before  # handler restored

    train(ctrl_c_config(), run, resume=True, verbose=0)  # no more Ctrl-C
    assert_same_run(straight, run)
    timing = ("epoch_time", "samples_per_s")
    strip = [
        {k: v for k, v in r.items() if k not in timing}
        for r in load_checkpoint(run / "last.pt")["history"]
    ]
    assert strip == [
        {k: v for k, v in r.items() if k not in timing}
        for r in load_checkpoint(straight / "last.pt")["history"]
    ]


def test_ctrl_c_on_the_last_step_of_an_epoch_stops_after_the_epoch(tmp_path, ctrl_c_loss):
    steps = 1437 // 128
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match=f"interrupted after epoch 1; saved {run}"):
        train(ctrl_c_config(steps - 1), run, verbose=0)
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 1 and state["partial"] is None
    assert (run / "metrics.csv").read_text().count("\n") == 2


def test_a_second_ctrl_c_stops_at_once_without_writing(tmp_path, ctrl_c_loss):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as info:
        train(ctrl_c_config(2, 2), run, verbose=0)
    assert not isinstance(info.value, TrainingInterrupted)
    assert not (run / "last.pt").exists()
