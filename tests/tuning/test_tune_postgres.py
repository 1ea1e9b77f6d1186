"""``chanloss tune --storage postgresql://...`` for real: two tune workers share one study on a
PostgreSQL server started here in a temporary directory; one worker is killed mid-trial and the
other finishes the study with no trial lost or duplicated.

Needs Debian's ``postgresql`` package (``initdb``, ``pg_ctl``); ``.ci/run`` installs it and sets
``CHANLOSS_REQUIRE_POSTGRES=1``, which turns a missing server into a failure instead of a skip.
As root (CI), the server runs as the unprivileged ``postgres`` user: initdb refuses root.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_config import TUNE_TINY

from chanloss.config import load_config
from chanloss.tuning import STUDY_NAME, open_storage, tune


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres_server(
    initdb_options: list[str], files: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """A PostgreSQL server of its own in a temporary directory, ``(socket directory, port)``;
    ``initdb_options`` set its authentication, ``files`` (name -> text) are written beside
    it first (a password file), readable by the server user. Skipped (or failed, with
    ``CHANLOSS_REQUIRE_POSTGRES``) where PostgreSQL is not installed."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        if os.environ.get("CHANLOSS_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL (initdb, pg_ctl) is not installed: apt-get install postgresql")
        pytest.skip("PostgreSQL (initdb, pg_ctl) is not installed")
    # a directory the server user can own (pytest's tmp_path is private to root)
    root = Path(tempfile.mkdtemp(prefix="chanloss-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    written = []
    for name, text in (files or {}).items():
        (root / name).write_text(text)
        written.append(root / name)
    if os.geteuid() == 0:
        for path in (root, sock, *written):
            shutil.chown(path, "postgres")
    run = {"check": True, "capture_output": True, "timeout": 120}
    port = 40000 + (os.getpid() + len(initdb_options)) % 20000
    options = [o.replace("{root}", str(root)) for o in initdb_options]
    try:
        subprocess.run(_as_server_user([initdb, "-D", str(data), "-U", "postgres", *options,
                                        "--no-sync"]), **run)  # fmt: skip
        subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w",
                                        "-o", f"-k {sock} -p {port} -c listen_addresses=''",
                                        "start"]), **run)  # fmt: skip
        yield str(sock), port
    finally:
        subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=120, check=False)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_server(["--auth=trust"]) as (sock, port):
        yield f"postgresql://postgres@/postgres?host={sock}&port={port}"


# The tune tests' config with a narrower learning-rate range.
TINY = {
    **TUNE_TINY,
    "search": {"mc": {"keep_ratio": None, "pool": None}, "optim": {"lr": [0.01, 0.3]}},
}
TRIALS = 6


def _worker(out: str, storage: str, log: str) -> None:
    with open(log, "w") as f:
        tune(load_config(raw=TINY), out, trials=TRIALS, folds=0, top=0, storage=storage,
             pruner="none", log=lambda line: print(line, file=f, flush=True))  # fmt: skip


def test_two_workers_share_a_postgresql_study_and_survive_a_killed_one(
    tmp_path: Path, postgres_url: str
) -> None:
    import multiprocessing

    import optuna
    from optuna.trial import TrialState

    import chanloss.tuning.report  # noqa: F401  (imported once, before the forks)
    from chanloss.data import build_datasets

    build_datasets("digits", val_fraction=0.25)
    ctx = multiprocessing.get_context("fork")
    a = ctx.Process(
        target=_worker, args=(str(tmp_path / "a"), postgres_url, str(tmp_path / "a.log"))
    )
    b = ctx.Process(
        target=_worker, args=(str(tmp_path / "b"), postgres_url, str(tmp_path / "b.log"))
    )
    a.start()
    storage = open_storage(postgres_url)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline:
        time.sleep(0.1)
        if STUDY_NAME not in optuna.study.get_all_study_names(storage):
            continue
        trials = optuna.load_study(study_name=STUDY_NAME, storage=storage).get_trials()
        if not b.is_alive() and b.exitcode is None and trials:  # B joins the study A made
            b.start()
        mine = [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values
                and t.user_attrs.get("pid") == a.pid]  # fmt: skip
        if mine and any(t.state == TrialState.COMPLETE for t in trials):  # A, mid-trial
            os.kill(a.pid, signal.SIGKILL)
            killed = mine[0].number
    a.join(timeout=60)
    assert killed is not None and a.exitcode == -signal.SIGKILL, (tmp_path / "a.log").read_text()
    b.join(timeout=300)
    log = (tmp_path / "b.log").read_text()
    assert b.exitcode == 0, log

    trials = optuna.load_study(study_name=STUDY_NAME, storage=storage).get_trials(deepcopy=False)
    # the trial A was running when it died (the one seen running may have finished between the
    # look and the kill, under load: then A had started its next one)
    (killed,) = [t.number for t in trials
                 if t.user_attrs.get("pid") == a.pid and t.state != TrialState.COMPLETE]  # fmt: skip
    by_number = {t.number: t for t in trials}
    assert len(by_number) == len(trials)  # no number twice
    assert by_number[killed].state == TrialState.FAIL  # the killed one: failed, then rerun
    assert f"trial {killed} was cut short by an earlier run; queued again" in log
    rerun = [t for t in trials if t.user_attrs.get("origin") == f"rerun of trial {killed}"]
    assert len(rerun) == 1 and rerun[0].state == TrialState.COMPLETE
    assert rerun[0].params == by_number[killed].params
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == TRIALS  # the study reached its target: nothing lost
    settings = [json.dumps([t.params, t.user_attrs.get("seed")], sort_keys=True) for t in complete]
    assert len(set(settings)) == len(settings)  # nothing trained twice
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    assert sum(t.state == TrialState.FAIL for t in trials) == 1
