"""Signals: SIGTERM and SIGUSR1 (what schedulers send before killing a job) behave like the first
Ctrl-C; the ``--nproc`` launcher passes signals on, reports a failed worker in one line with its
log, and a stopped DDP peer ends the run within ``distributed.timeout_minutes``."""

from __future__ import annotations

import copy
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch.nn.functional as F
import yaml
from torch import Tensor

from chanloss.cli import main
from chanloss.config import load_config
from chanloss.experiments import launcher
from chanloss.losses import LOSSES, Loss
from chanloss.losses.registry import register_loss
from chanloss.run.checkpoint import load_checkpoint
from chanloss.run.run_dir import RunDir, RunDirBusy
from chanloss.run.session import train
from chanloss.run.trainer import TrainingInterrupted

TINY = {
    "model": {"name": "convnet_small", "width": 4, "feature_channels": 20, "pools": 1},
    "data": {"name": "digits", "augment": {"crop_padding": 1}},
    "losses": [{"name": "ce"}, {"name": "test_signal"}],
    "optim": {"lr": 0.05},
    "schedule": {"name": "constant"},
    "epochs": 2,
    "batch_size": 128,
    "device": "cpu",
}
STEPS = 1437 // 128


class SignalLoss(Loss):
    """Test-only loss (zero) that sends this process ``(step, signal)`` of ``AT`` at those
    global steps (a class attribute, so that interrupted and resumed runs share the config)."""

    AT: list[tuple[int, int]] = []
    AT_START: int | None = None  # a signal sent while the run is built

    def __init__(self) -> None:
        super().__init__(weights={"zero": 1.0})
        if self.AT_START is not None:
            os.kill(os.getpid(), self.AT_START)

    def update_schedule(self, step: int) -> None:
        for at, signum in self.AT:
            if at == step:
                os.kill(os.getpid(), signum)

    def compute_terms(self, inputs: Tensor, labels: Tensor, **kwargs: object) -> dict[str, Tensor]:
        return {"zero": 0.0 * F.cross_entropy(inputs, labels)}


@pytest.fixture(autouse=True)
def signal_loss():
    register_loss("test_signal")(SignalLoss)
    yield
    LOSSES.pop("test_signal")
    SignalLoss.AT = []
    SignalLoss.AT_START = None


def config(*at: tuple[int, int]):
    SignalLoss.AT = list(at)
    return load_config(raw=copy.deepcopy(TINY))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_sigterm_and_sigusr1_finish_the_step_save_and_resume_exactly(tmp_path, signum):
    """Sent twice at the same step (a repeated SIGTERM must not stop at once)."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    train(config(), straight, verbose=0)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    with pytest.raises(TrainingInterrupted) as info:
        train(config((STEPS + 4, signum), (STEPS + 4, signum)), run, verbose=0)
    name = signal.Signals(signum).name
    assert str(info.value) == (
        f"interrupted by {name} at epoch 2, step 5/{STEPS}; saved {run / 'last.pt'}"
    )
    assert info.value.signum == signum
    assert {sig: signal.getsignal(sig) for sig in before} == before  # handlers restored
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 1 and state["partial"]["step"] == 5
    train(config(), run, resume=True, verbose=0)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(run / "last.pt")
    for key in a["model"]:
        assert a["model"][key].equal(b["model"][key]), key


def test_sigterm_from_the_command_line_exits_143_with_the_resume_command(tmp_path, capsys):
    cfg, run = tmp_path / "cfg.yaml", tmp_path / "run"
    cfg.write_text(yaml.safe_dump(TINY))
    SignalLoss.AT = [(2, signal.SIGTERM)]
    assert main(["train", "-c", str(cfg), "--out", str(run), "-q"]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "chanloss: SIGTERM: finishing the current step, then saving last.pt"
    assert err[1].startswith(
        f"chanloss: interrupted by SIGTERM at epoch 1, step 3/{STEPS}; saved {run / 'last.pt'}; "
        "resume with: "
    )
    resume = shlex.split(err[1].split("resume with: ")[1])
    assert resume[-4:] == ["train", "--out", str(run), "--resume"]
    assert load_checkpoint(run / "last.pt")["partial"]["step"] == 3


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_while_the_run_starts_is_one_line_and_leaves_nothing(
    tmp_path, capsys, signum
):
    cfg, run = tmp_path / "cfg.yaml", tmp_path / "run"
    cfg.write_text(yaml.safe_dump(TINY))
    SignalLoss.AT_START = signum
    before = signal.getsignal(signum)
    assert main(["train", "-c", str(cfg), "--out", str(run), "-q"]) == 128 + signum
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"chanloss: interrupted by {signal.Signals(signum).name} while the run was starting or "
        "finishing (no training step was cut short; the files on disk are complete)"
    ]
    assert not run.exists()  # the directory it had created is removed again
    assert signal.getsignal(signum) == before


def test_sigterm_between_the_runs_of_compare_is_one_line_and_the_rerun_resumes(
    tmp_path, capsys, monkeypatch
):
    import chanloss.experiments.comparison  # noqa: F401  (the module, not the function)

    compare_module = sys.modules["chanloss.experiments.comparison"]

    cfg, out = tmp_path / "tiny.yaml", tmp_path / "cmp"
    cfg.write_text(yaml.safe_dump({**TINY, "losses": [{"name": "ce"}], "epochs": 1}))
    command = ["compare", "-c", str(cfg), "--seeds", "2", "--out", str(out), "--jobs", "1"]
    train_locked = compare_module._train_locked

    def then_sigterm(config, run_dir):
        summary = train_locked(config, run_dir)
        os.kill(os.getpid(), signal.SIGTERM)  # after the first run, before the second starts
        return summary

    monkeypatch.setattr(compare_module, "_train_locked", then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    assert main(command) == 143
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "chanloss: interrupted by SIGTERM while the run was starting or finishing (no training "
        "step was cut short; the files on disk are complete)"
    ]
    assert signal.getsignal(signal.SIGTERM) == before
    assert (out / "tiny" / "seed0" / "summary.json").is_file()
    assert not (out / "tiny" / "seed1").exists()
    monkeypatch.setattr(compare_module, "_train_locked", train_locked)
    assert main(command) == 0
    assert (out / "tiny" / "seed1" / "summary.json").is_file() and (out / "results.csv").is_file()


# -- the --nproc launcher, with stand-in workers (no torch: milliseconds) ------------------------
WORKER = """
import os, pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
rank = os.environ["RANK"]
def stop(signum, frame):
    (out / f"rank{rank}.signal").write_text(str(signum))
    sys.exit(128 + signum)
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
    signal.signal(sig, stop)
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "CHANLOSS_NPROC")
(out / f"rank{rank}.tmp").write_text(" ".join(os.environ[k] for k in keys))
(out / f"rank{rank}.tmp").rename(out / f"rank{rank}.ready")  # whole when it appears
if sys.argv[2] == "fail" and rank == "1":
    print("worker 1: something went wrong", file=sys.stderr)
    sys.exit(3)
if sys.argv[2] == "kill" and rank == "1":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(60)
"""


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """``launch`` runs the stand-in worker above instead of ``python -m chanloss``."""
    marks = tmp_path / "marks"
    marks.mkdir()

    def use(mode: str) -> Path:
        monkeypatch.setattr(
            launcher,
            "worker_command",
            lambda argv: [sys.executable, "-c", WORKER, str(marks), mode],
        )
        return marks

    monkeypatch.setattr(launcher, "GRACE_S", 0.2)
    return use


def _when_ready(marks: Path, action) -> threading.Thread:
    def wait() -> None:
        end = time.monotonic() + 30
        while len(list(marks.glob("*.ready"))) < 2 and time.monotonic() < end:
            time.sleep(0.01)
        action()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1])
def test_the_launcher_passes_signals_on_to_every_worker(tmp_path, stand_in, signum):
    marks = stand_in("wait")
    thread = _when_ready(marks, lambda: os.kill(os.getpid(), signum))
    before = signal.getsignal(signum)
    status = launcher.launch(2, ["train"], out_dir=tmp_path / "run")
    thread.join()
    assert status == 128 + signum
    for rank in (0, 1):
        assert (marks / f"rank{rank}.signal").read_text() == str(signum)
        assert (marks / f"rank{rank}.ready").read_text() == f"{rank} {rank} 2 127.0.0.1 2"
    assert signal.getsignal(signum) == before
    assert not (tmp_path / "run" / "logs").exists()  # empty logs are removed


@pytest.mark.parametrize(
    ("mode", "how"), [("fail", "exit status 3"), ("kill", "killed by SIGKILL")]
)
def test_a_failed_worker_is_one_line_naming_its_log(tmp_path, stand_in, capsys, mode, how):
    stand_in(mode)
    run = tmp_path / "run"
    start = time.monotonic()
    status = launcher.launch(2, ["train"], out_dir=run)
    assert time.monotonic() - start < 20  # worker 0 was stopped after the grace period
    log = run / "logs" / "rank1.log"
    assert status == (3 if mode == "fail" else 1)
    err = capsys.readouterr().err.splitlines()
    assert err == [f"chanloss: error: process 1 of 2 failed ({how}); its output: {log}"]
    if mode == "fail":
        assert log.read_text() == "worker 1: something went wrong\n"


def test_the_launcher_refuses_a_run_directory_in_use_before_starting(tmp_path, stand_in):
    marks = stand_in("wait")
    with RunDir(tmp_path / "run"), pytest.raises(RunDirBusy, match="in use by another"):
        launcher.launch(2, ["train"], out_dir=tmp_path / "run")
    assert not list(marks.iterdir())


# -- two real processes ------------------------------------------------------------------------
DDP = {
    "model": {"name": "convnet_small", "width": 4, "feature_channels": 20, "pools": 1},
    "data": {"name": "digits"},
    "losses": [{"name": "ce"}],
    "optim": {"lr": 0.05},
    "schedule": {"name": "constant"},
    "epochs": 100,
    "batch_size": 64,
    "eval_every": 1000,  # no evaluation: only training steps
    "device": "cpu",
    "distributed": {"timeout_minutes": 0.05},  # 3 s
}


def _start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    cfg, run = tmp_path / "ddp.yaml", tmp_path / "run"
    cfg.write_text(yaml.safe_dump(DDP))
    argv = ["train", "-c", str(cfg), "--out", str(run), "-q", "--nproc", "2", *extra]
    proc = subprocess.Popen(
        [sys.executable, "-m", "chanloss", *argv],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, run


def _wait_for_checkpoint(proc: subprocess.Popen, run: Path) -> None:
    end = time.monotonic() + 120
    while not (run / "last.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no checkpoint in time"
        time.sleep(0.05)


def _workers(launcher: int) -> dict[int, int]:
    """``{rank: pid}`` of the launcher's children (Linux /proc)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next(e for e in environ if e.startswith(b"RANK="))
        ranks[int(rank[5:])] = pid
    return ranks


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_ddp_sigterm_saves_and_a_stopped_peer_ends_the_run_in_bounded_time(tmp_path):
    """SIGTERM to ``--nproc 2``: both ranks stop at the same step, last.pt is written, the
    resume command names --nproc 2. Resumed, then one rank is stopped (SIGSTOP): the other
    gives up after distributed.timeout_minutes with one line, and the launcher ends."""
    proc, run = _start(tmp_path)
    try:
        _wait_for_checkpoint(proc, run)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert re.match(r"chanloss: interrupted by SIGTERM (at|after) epoch \d+", last), err
    assert shlex.split(last.split("resume with: ")[1])[-6:] == [
        *("train", "--out", str(run), "--resume", "--nproc", "2")
    ]
    state = load_checkpoint(run / "last.pt")
    epoch = state["epoch"]
    if state["partial"] is not None:
        assert len(state["partial_ranks"]) == 2 and len(state["rng_ranks"]) == 2

    proc, run = _start(tmp_path, "--resume")
    try:
        end = time.monotonic() + 120
        while load_checkpoint(run / "last.pt")["epoch"] <= epoch:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < end
            time.sleep(0.1)
        os.kill(_workers(proc.pid)[1], signal.SIGSTOP)
        stopped = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - stopped
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if line.startswith("chanloss: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("chanloss: error: process 0: a collective operation"), err
    assert "distributed.timeout_minutes" in lines[0]
    assert took < 3 + launcher.GRACE_S + 5 + 10  # timeout + grace + stop + slack
    assert load_checkpoint(run / "last.pt")["epoch"] > epoch  # the run's checkpoints remain
