"""The run directory has one owner: a second run into it is refused with one line naming the
owner, a stale lock of a dead process is taken over, files follow the umask."""

from __future__ import annotations

import copy
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pytest
import yaml
from tiny_config import TINY

from chanloss.cli import main
from chanloss.config import load_config
from chanloss.experiments.comparison import compare
from chanloss.run.run_dir import (
    HOLDER_FILE,
    LOCK_FILE,
    RunDir,
    RunDirBusy,
    atomic_open,
    write_json,
)
from chanloss.run.session import train

HOST = socket.gethostname()


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def flock_holder(tmp_path):
    """Start a process that holds ``RUN/.chanloss.lock`` with a plain ``flock`` (as a child
    that inherited a dead run's lock would); yields ``(run dir, process)``."""
    run = tmp_path / "run"
    run.mkdir()
    code = (
        "import fcntl, sys, time\n"
        "f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
        "print('held', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(run / LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    yield run, proc
    proc.kill()
    proc.wait()


def write_holder(run: Path, pid: int, host: str = HOST) -> None:
    write_json(run / HOLDER_FILE, {"pid": pid, "host": host, "since": "2026-01-02 03:04:05 UTC"})


def test_a_live_owner_is_refused_with_its_pid_host_and_start(flock_holder):
    run, proc = flock_holder
    write_holder(run, proc.pid)
    with pytest.raises(RunDirBusy) as info:
        RunDir(run).acquire()
    message = str(info.value)
    assert (
        f"the run directory {run} is in use by another chanloss run (pid {proc.pid} on host "
        f"{HOST}, since 2026-01-02 03:04:05 UTC)" in message
    )
    assert "\n" not in message and str(run / LOCK_FILE) in message
    assert json.loads((run / HOLDER_FILE).read_text())["pid"] == proc.pid  # untouched


def test_a_lock_whose_owner_died_is_taken_over(flock_holder):
    """The recorded owner is dead; its lock lives on in another process (a child that
    inherited the descriptor): the directory is taken over."""
    run, _ = flock_holder
    write_holder(run, dead_pid())
    with RunDir(run) as owner:
        assert owner.locked
        assert json.loads((run / HOLDER_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(RunDirBusy, match=r"\(this process\)"):
            RunDir(run).acquire()
    assert not (run / HOLDER_FILE).exists()


@pytest.mark.parametrize("holder", ["other-host", "no-holder-file"])
def test_a_lock_that_cannot_be_checked_is_refused(flock_holder, holder):
    run, _ = flock_holder
    if holder == "other-host":
        write_holder(run, dead_pid(), host=f"not-{HOST}")
        expected = f"on host not-{HOST}"
    else:
        expected = f"an unknown process (no readable {HOLDER_FILE})"
    with pytest.raises(RunDirBusy, match=expected.replace("(", r"\(").replace(")", r"\)")):
        RunDir(run).acquire()


@pytest.mark.parametrize("alive", [True, False])
def test_soft_lock_files_without_flock_are_checked_the_same_way(tmp_path, monkeypatch, alive):
    """On a file system without ``flock`` the lock is a file that a killed run leaves behind."""
    monkeypatch.setattr(filelock, "FileLock", filelock.SoftFileLock)
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text("")
    holder = subprocess.Popen(["sleep", "30"]) if alive else None
    try:
        write_holder(run, holder.pid if holder else dead_pid())
        if alive:
            with pytest.raises(RunDirBusy, match=f"pid {holder.pid} on host"):
                RunDir(run).acquire()
            assert (run / LOCK_FILE).exists()
        else:
            with RunDir(run):
                assert json.loads((run / HOLDER_FILE).read_text())["pid"] == os.getpid()
            assert not (run / LOCK_FILE).exists()  # a soft lock is removed on release
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()


def test_two_trainings_into_one_directory(tmp_path, capsys):
    """While ``chanloss train`` runs, a second one into the same --out exits 2 with one line
    naming it and writes nothing; once the first is killed (-9) its stale lock is taken over."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "epochs": 200}))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "chanloss", "train", "-c", str(cfg), "--out", str(run), "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        end = time.monotonic() + 60
        while (RunDir(run).holder() or {}).get("pid") != first.pid:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < end
            time.sleep(0.01)
        before = sorted(os.listdir(run))
        assert main(["train", "-c", str(cfg), "--out", str(run), "-q"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1, err
        assert f"is in use by another chanloss run (pid {first.pid} on host {HOST}" in err[0]
        assert first.poll() is None  # the first run goes on
        assert sorted(os.listdir(run)) == before
    finally:
        first.kill()
        first.wait()
    assert RunDir(run).holder()["pid"] == first.pid  # left behind by the kill
    with RunDir(run) as again:
        assert again.holder()["pid"] == os.getpid()


def test_compare_and_train_take_the_lock_of_each_run(tmp_path):
    out = tmp_path / "cmp"
    config = load_config(raw=copy.deepcopy(TINY))
    with RunDir(out / "a" / "seed0"), pytest.raises(RunDirBusy, match="this process"):
        compare([("a", config)], seeds=1, out_dir=out)
    with RunDir(tmp_path / "run") as run:  # a caller's RunDir is used as it is
        train(config, run, verbose=0)
        assert run.locked and (tmp_path / "run" / HOLDER_FILE).exists()
    assert not (tmp_path / "run" / HOLDER_FILE).exists()


def _modes(run: Path) -> dict[str, int]:
    return {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in run.iterdir()
        if p.is_file() and p.name != LOCK_FILE
    }


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def test_run_files_follow_the_umask(tmp_path, umask):
    umask(0o027)
    run = tmp_path / "run"
    train(load_config(raw=copy.deepcopy(TINY)), run, verbose=0)
    modes = _modes(run)
    assert set(modes) == {"config.yaml", "metrics.csv", "summary.json", "last.pt", "best.pt"}
    assert set(modes.values()) == {0o640}, modes
    umask(0o002)
    with RunDir(run) as owner:
        owner.write_json("summary.json", {"x": 1})
        owner.write_metrics([{"epoch": 1, "a": None}], ["epoch", "a"])
        assert (run / "metrics.csv").read_bytes() == b"epoch,a\r\n1,\r\n"
    assert _modes(run)["summary.json"] == _modes(run)["metrics.csv"] == 0o664


def test_an_atomic_write_that_fails_leaves_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half")
        raise RuntimeError
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["summary.json"]
