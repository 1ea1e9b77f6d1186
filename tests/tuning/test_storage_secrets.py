"""A PostgreSQL password given in ``--storage postgresql://user:PASSWORD@host/db`` is never
printed or stored (terminal, tune.json, report.html, errors, tracebacks, resume commands), and
a URL without one takes it from ``PGPASSWORD`` or a ``.pgpass`` file as libpq does (issue 33).

The server test starts a PostgreSQL server that asks for a password (scram-sha-256); it is
skipped without Debian's ``postgresql`` package, like ``test_tune_postgres.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_tune_postgres import postgres_server
from tiny_config import TUNE_TINY

from chanloss.cli import main
from chanloss.core.masking import mask_secrets

SECRET = "Xy7-secret-pw"

# two epochs and a learning-rate range where every trial learns: a best setting is chosen
TINY = {**TUNE_TINY, "epochs": 2, "search": {**TUNE_TINY["search"], "optim": {"lr": [0.05, 0.3]}}}


def test_mask_secrets_masks_url_passwords_and_password_settings() -> None:
    assert (
        mask_secrets(f"--storage postgresql://bob:{SECRET}@db.lab:5432/studies failed")
        == "--storage postgresql://bob:***@db.lab:5432/studies failed"
    )
    assert mask_secrets(f"'postgresql+psycopg2://bob:{SECRET}@/db?host=/s'") == (
        "'postgresql+psycopg2://bob:***@/db?host=/s'"
    )
    assert mask_secrets(f"postgresql://bob@h/db?password={SECRET}&port=1") == (
        "postgresql://bob@h/db?password=***&port=1"
    )
    assert mask_secrets(f"host=h password='{SECRET}' user=bob") == "host=h password=*** user=bob"
    # an "@" in the password (not percent-encoded) stays masked; two URLs in one text
    assert mask_secrets("postgresql://bob:p@ss@h/db and mysql://al:x@h2/db") == (
        "postgresql://bob:***@h/db and mysql://al:***@h2/db"
    )
    # nothing else changes: no password, a port, a path, sqlite and journal storages
    for plain in (
        "postgresql://bob@db.lab:5432/studies",
        "http://host:8080/path",
        "sqlite:////tmp/a:b/study.db",
        "journal:/shared/x.journal",
    ):
        assert mask_secrets(plain) == plain


def _tune_config(tmp_path: Path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


def test_a_storage_that_cannot_be_opened_is_one_line_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql://bob:{SECRET}@127.0.0.1:1/studies"  # port 1: nothing listens
    argv = ["tune", "-c", _tune_config(tmp_path), "--out", str(tmp_path / "t"), "--storage", url]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "chanloss: error: --storage postgresql://bob:***@"
    )


def test_a_traceback_that_would_quote_a_password_is_masked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from chanloss import cli

    def broken(args: object) -> int:
        raise RuntimeError(f"lost the connection to postgresql://bob:{SECRET}@db.lab/studies")

    monkeypatch.setattr(cli.COMMANDS["export"], "run", broken)
    assert main(["export", "somewhere"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: lost the connection" in err
    assert SECRET not in err and "postgresql://bob:***@db.lab/studies" in err
    # a traceback without a secret is Python's own (raised, not rewritten)
    monkeypatch.setattr(cli.COMMANDS["export"], "run", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["export", "somewhere"])


def test_the_resume_command_masks_the_password() -> None:
    from chanloss.cli.support import rerun_command

    line = rerun_command(["tune", "--storage", f"postgresql://bob:{SECRET}@h/db", "--resume"])
    assert SECRET not in line and "postgresql://bob:***@h/db" in line and "PGPASSWORD" in line
    assert "PGPASSWORD" not in rerun_command(["tune", "--storage", "postgresql://bob@h/db"])


@pytest.fixture
def password_server() -> Iterator[tuple[str, int]]:
    """A PostgreSQL server whose user ``postgres`` needs the password :data:`SECRET`:
    ``(socket directory, port)``."""
    options = ["--auth=scram-sha-256", "--pwfile={root}/pw"]
    with postgres_server(options, {"pw": SECRET + "\n"}) as server:
        yield server


def test_a_postgresql_password_is_used_but_never_printed_or_stored(
    tmp_path: Path,
    password_server: tuple[str, int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sock, port = password_server
    cfg = _tune_config(tmp_path)
    for name in ("PGPASSWORD", "PGPASSFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))
    where = f"postgres?host={sock}&port={port}"

    # without any password the server refuses: one line, naming the storage
    argv = ["tune", "-c", cfg, "--trials", "3", "--confirm-seeds", "0", "--top", "0"]
    assert (
        main(
            [*argv, "--out", str(tmp_path / "none"), "--storage", f"postgresql://postgres@/{where}"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        err.startswith("chanloss: error: --storage postgresql://postgres@/postgres")
        and "password" in err
    )

    # the password in the URL: used, and shown as *** in the terminal, tune.json, report.html
    out = tmp_path / "in-url"
    url = f"postgresql://postgres:{SECRET}@/{where}"
    assert main([*argv, "--out", str(out), "--storage", url]) == 0
    captured = capsys.readouterr()
    assert "storage postgresql://postgres:***@/postgres" in captured.out
    stored = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".html", ".yaml")]
    assert out / "tune.json" in stored and out / "report.html" in stored
    for text in [captured.out, captured.err, *(p.read_text() for p in stored)]:
        assert SECRET not in text
    assert "postgresql://postgres:***@/postgres" in (out / "report.html").read_text()

    # no password in the URL: libpq reads PGPASSWORD, or a .pgpass file (here via PGPASSFILE)
    monkeypatch.setenv("PGPASSWORD", SECRET)
    bare = f"postgresql://postgres@/{where}"
    assert main([*argv, "--out", str(tmp_path / "env"), "--storage", bare]) == 0
    monkeypatch.delenv("PGPASSWORD")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"*:*:*:postgres:{SECRET}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    assert main([*argv, "--out", str(tmp_path / "file"), "--storage", bare]) == 0
    assert SECRET not in "".join(capsys.readouterr())


def test_every_tune_log_line_is_masked(tmp_path: Path) -> None:
    from chanloss.config import load_config
    from chanloss.tuning import Tuner

    lines: list[str] = []
    url = f"postgresql://bob:{SECRET}@db.lab/studies"
    tuner = Tuner(load_config(raw=TINY), tmp_path / "t", 1, storage=url, log=lines.append)
    assert tuner.spec == url and tuner.shown_spec == "postgresql://bob:***@db.lab/studies"
    tuner.log(f"trial 3: failed: lost {url}")  # e.g. a trial's error quoting the storage
    assert lines == ["trial 3: failed: lost postgresql://bob:***@db.lab/studies"]
