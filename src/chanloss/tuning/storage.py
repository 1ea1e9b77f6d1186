"""Where a study lives (an Optuna storage) and what it is of (its identity)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from chanloss.config import ConfigError, TrainConfig, config_to_dict, resolved_config_dict
from chanloss.config.search import Dimension
from chanloss.core.masking import mask_secrets
from chanloss.losses.search import Choice, IntRange, LogUniform, SearchParam

__all__ = [
    "STUDY_NAME",
    "distribution",
    "fingerprint",
    "identity",
    "open_storage",
    "resolved_identity",
    "storage_url",
]

STUDY_NAME = "chanloss-tune"
# Keys of the config that do not change what a trial trains (left out of the study identity).
IGNORED_KEYS = ("device", "workers", "tensorboard", "eval_batch_size", "search")


def storage_url(storage: str | None, out_dir: Path) -> str:
    """The storage spec: ``--storage`` as given, or the SQLite database in ``out_dir``."""
    if storage is None:
        return f"sqlite:///{(out_dir / 'study.db').resolve()}"
    return storage


def open_storage(spec: str) -> Any:
    """An Optuna storage: an RDB URL (``sqlite:///PATH``, ``postgresql://...``) or
    ``journal:PATH`` (a journal file, e.g. on a shared file system)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    try:
        if spec.startswith("journal:"):
            path = Path(spec.removeprefix("journal:")).expanduser()
            if not path.parent.is_dir():
                raise ConfigError(
                    mask_secrets(f"--storage {spec}: the directory {path.parent} does not exist")
                )
            return JournalStorage(JournalFileBackend(str(path)))
        if "://" not in spec:
            raise ConfigError(
                "--storage: expected a database URL (sqlite:///PATH, postgresql://...) or "
                f"journal:PATH, got {mask_secrets(repr(spec))}"
            )
        kwargs: dict[str, Any] = {}
        url = _with_driver(spec)
        if spec.startswith("sqlite"):
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        for attempt in range(5):
            try:
                storage = optuna.storages.RDBStorage(url, **kwargs)
                if spec.startswith("sqlite"):
                    _serialise_sqlite(storage.engine)
                return storage
            except Exception as err:  # another process is creating the same new database
                racing = type(err).__name__ in ("OperationalError", "IntegrityError")
                if attempt == 4 or not racing or "unable to open" in str(err):
                    raise
                time.sleep(0.2 * (attempt + 1))
    except ConfigError:
        raise
    except Exception as err:  # the driver is missing, the URL is malformed, the server is down
        raise ConfigError(
            mask_secrets(f"--storage {spec}: cannot open it ({type(err).__name__}: {err})")
        ) from None


def _serialise_sqlite(engine: Any) -> None:
    """Every SQLite transaction ``BEGIN IMMEDIATE``. Python's sqlite3 module opens a
    transaction only at the first write, so Optuna's read-then-update of a waiting trial is not
    atomic there: two workers popping the queue at once both got the same trial (seen: 6 to 14
    of 60 enqueued trials handed out twice). SQLAlchemy's recipe for SQLite transactions."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners: closed, reopened with them


def _with_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy 2.1 means psycopg 3 by
    it, the dev extras install psycopg2 (``psycopg2-binary``)."""
    import importlib.util

    find = importlib.util.find_spec
    if url.startswith("postgresql://") and find("psycopg") is None and find("psycopg2"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def identity(config: TrainConfig, dims: list[Dimension], fixed: dict) -> dict[str, Any]:
    """What a study is of: the resolved config (without run options) and the search space."""
    raw = {k: v for k, v in config_to_dict(config).items() if k not in IGNORED_KEYS}
    raw["data"] = {**raw["data"], "root": None}
    return {
        "config": raw,
        "space": [d.describe() for d in dims],
        "fixed": {".".join(str(p) for p in path): value for path, value in fixed.items()},
    }


def resolved_identity(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored study identity with the config keys that the schema gained since it was
    written filled in with their defaults (a study survives an upgrade of chanloss)."""
    config = stored.get("config")
    if not isinstance(config, dict):
        return stored
    resolved = resolved_config_dict(config)
    if resolved is config:
        return stored
    raw = {k: v for k, v in resolved.items() if k not in IGNORED_KEYS}
    raw["data"] = {**raw["data"], "root": None}
    return {**stored, "config": raw}


def fingerprint(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def distribution(param: SearchParam) -> Any:
    """The Optuna distribution of a declared range."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if isinstance(param, LogUniform):
        return FloatDistribution(param.low, param.high, log=True)
    if isinstance(param, IntRange):
        return IntDistribution(param.low, param.high)
    if isinstance(param, Choice):
        return CategoricalDistribution(param.values)
    return FloatDistribution(param.low, param.high)
