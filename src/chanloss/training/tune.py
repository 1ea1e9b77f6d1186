"""``chanloss tune``: search the loss (and optimiser) settings on the validation split with Optuna.

Every trial is a training run of the config with sampled settings (TPE sampler), scored by
its final epoch's VALIDATION accuracy; a pruner (median or successive halving) fed the
per-epoch validation accuracy stops poor trials early. The test split is never read during
the search (trials train with ``evaluate_test=False``). The search space is the losses'
declared spaces (``search_space`` on each loss class) narrowed or extended by the config's
``search:`` block (:mod:`chanloss.training.search`).

The study lives in an Optuna storage: ``OUT/study.db`` (SQLite) by default, so ``--resume``
continues an interrupted search without rerunning finished trials, or ``--storage URL`` (a
database shared by several machines, or ``journal:PATH``, a journal file on a shared file
system). ``--jobs J`` runs J trials at once in separate processes, each with ``cores // J``
torch threads.

At the end, the best setting is trained again over ``--confirm-seeds`` fresh seeds next to the
same config with cross-entropy alone (compared on validation), and the test accuracy of both
is read once, at the end of those runs. ``OUT`` receives ``best.yaml`` (a config for
``chanloss train``), ``trials.csv``, ``tune.json`` and ``report.html`` with its figures.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import math
import os
import socket
import statistics
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chanloss.losses.search import Choice, IntRange, LogUniform, SearchParam
from chanloss.training.config import (
    ConfigError,
    TrainConfig,
    config_to_dict,
    load_config,
    resolved_config_dict,
    yaml_load,
)
from chanloss.training.search import (
    Dimension,
    apply_params,
    low_end_params,
    resolve_space,
    start_params,
)

__all__ = ["STUDY_NAME", "TuneInterrupted", "confirm_runs", "parse_duration", "run_confirm", "tune"]

STUDY_NAME = "chanloss-tune"
PRUNERS = ("median", "halving", "none")
# Keys of the config that do not change what a trial trains (left out of the study identity).
_IGNORED_KEYS = ("device", "workers", "tensorboard", "eval_batch_size", "search")
_FAILURES_IN_A_ROW = 3  # consecutive failed trials (errors, not pruning) end the search


class TuneInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``tune``: running trials were marked for a rerun; continue with --resume."""

    def __init__(self, message: str, out_dir: Path) -> None:
        super().__init__(message)
        self.out_dir = out_dir


# -- small helpers -----------------------------------------------------------------------------
def parse_duration(text: str) -> float:
    """Seconds in ``2h``, ``90m``, ``45s``, ``1h30m`` or a plain number of seconds."""
    import re

    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        seconds = float(s)
    else:
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", s)
        if not s or parts is None or not any(parts.groups()):
            raise ValueError(f"expected a duration like 2h, 90m, 1h30m or 3600, got {text!r}")
        h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
        seconds = 3600 * h + 60 * m + sec
    if seconds <= 0:
        raise ValueError(f"expected a positive duration, got {text!r}")
    return seconds


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def gain_over(tuned: list[float], base: list[float]) -> dict[str, Any]:
    """Mean difference ``tuned - base``, its standard error (Welch) and whether it lies beyond
    two standard errors; ``beyond`` is None when either side has fewer than two values."""
    (ma, sa), (mb, sb) = _mean_std(tuned), _mean_std(base)
    diff = ma - mb
    if len(tuned) < 2 or len(base) < 2:
        return {"diff": diff, "se": math.nan, "beyond": None}
    se = math.sqrt(sa**2 / len(tuned) + sb**2 / len(base))
    return {"diff": diff, "se": se, "beyond": bool(abs(diff) > 2 * se)}


def _write_text(path: Path, text: str) -> None:
    from chanloss.training.run_dir import atomic_open

    with atomic_open(path) as f:
        f.write(text)


# -- storage and study ---------------------------------------------------------------------------
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
                raise ConfigError(f"--storage {spec}: the directory {path.parent} does not exist")
            return JournalStorage(JournalFileBackend(str(path)))
        if "://" not in spec:
            raise ConfigError(
                f"--storage: expected a database URL (sqlite:///PATH, postgresql://...) or "
                f"journal:PATH, got {spec!r}"
            )
        kwargs: dict[str, Any] = {}
        if spec.startswith("sqlite"):
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(spec, **kwargs)
            except Exception as err:  # another process is creating the same new database
                racing = type(err).__name__ in ("OperationalError", "IntegrityError")
                if attempt == 4 or not racing or "unable to open" in str(err):
                    raise
                time.sleep(0.2 * (attempt + 1))
    except ConfigError:
        raise
    except Exception as err:  # the driver is missing, the URL is malformed, the server is down
        raise ConfigError(
            f"--storage {spec}: cannot open it ({type(err).__name__}: {err})"
        ) from None


def identity(config: TrainConfig, dims: list[Dimension], fixed: dict) -> dict[str, Any]:
    """What a study is of: the resolved config (without run options) and the search space."""
    raw = {k: v for k, v in config_to_dict(config).items() if k not in _IGNORED_KEYS}
    raw["data"] = {**raw["data"], "root": None}
    return {
        "config": raw,
        "space": [d.describe() for d in dims],
        "fixed": {".".join(str(p) for p in path): value for path, value in fixed.items()},
    }


def _resolved_identity(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored study identity with the config keys that the schema gained since it was
    written filled in with their defaults (a study survives an upgrade of chanloss)."""
    config = stored.get("config")
    if not isinstance(config, dict):
        return stored
    resolved = resolved_config_dict(config)
    if resolved is config:
        return stored
    raw = {k: v for k, v in resolved.items() if k not in _IGNORED_KEYS}
    raw["data"] = {**raw["data"], "root": None}
    return {**stored, "config": raw}


def _fingerprint(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def make_pruner(kind: str, epochs: int) -> Any:
    """The pruner: ``median`` (a trial whose validation accuracy is below the median of the
    earlier trials at the same epoch stops, after a warm-up of a quarter of the epochs),
    ``halving`` (asynchronous successive halving) or ``none``."""
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=epochs // 4)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner: expected one of {', '.join(PRUNERS)}, got {kind!r}")


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


# -- one training run ----------------------------------------------------------------------------
def _diverged(err: BaseException) -> bool:
    from chanloss.training.trainer import NonFiniteLossError

    return isinstance(err, NonFiniteLossError) or "diverged" in str(err)


def _last_val(run_dir: Path) -> float | None:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        vals = [r["val_acc"] for r in csv.DictReader(f) if r.get("val_acc")]
    return float(vals[-1]) if vals else None


def run_trial(trial: Any, raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train one trial's config into ``run_dir`` (test split never read), reporting the
    validation accuracy of every evaluated epoch to ``trial`` and stopping when it is pruned.

    Returns ``{"state": complete | pruned | diverged | failed, "value", "epochs", "time_s",
    "error"}``; ``value`` is the final epoch's validation accuracy (complete trials).
    """
    import optuna

    from chanloss.training.trainer import train

    start = time.perf_counter()
    done = {"epochs": 0}

    def on_epoch_end(epoch: int, row: dict[str, Any]) -> None:
        done["epochs"] = epoch
        if row.get("val_acc") is None:
            return
        trial.report(float(row["val_acc"]), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    result: dict[str, Any] = {"state": "complete", "value": None, "error": None}
    try:
        config = load_config(raw=raw)
        summary = train(config, run_dir, verbose=0, evaluate_test=False, on_epoch_end=on_epoch_end)
        result["value"] = _last_val(run_dir)
        if result["value"] is None:
            raise ConfigError(f"trial run {run_dir} recorded no validation accuracy")
        done["epochs"] = summary["epochs"]
    except optuna.TrialPruned:
        result["state"] = "pruned"
    except ConfigError as err:
        result["state"] = "diverged" if _diverged(err) else "failed"
        result["error"] = " ".join(str(err).split())
    except (RuntimeError, ValueError, TypeError, OSError) as err:
        result["state"] = "failed"
        result["error"] = f"{type(err).__name__}: {' '.join(str(err).split())}"
    result["epochs"] = done["epochs"]
    result["time_s"] = time.perf_counter() - start
    return result


def final_test_accuracy(run_dir: Path) -> float:
    """The test accuracy of a finished run's final model (``last.pt``), read once."""
    from chanloss.training.checkpoint import load_checkpoint
    from chanloss.training.trainer import Trainer

    state = load_checkpoint(run_dir / "last.pt", map_location="cpu")
    config = load_config(raw=state["config"])
    trainer = Trainer(config, run_dir, verbose=0)
    trainer.load_state(state, str(run_dir / "last.pt"))
    return trainer.accuracy("test")


def run_confirm(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A confirmation run: train (or resume, or reuse when finished), then read the final
    model's test accuracy once. ``{"val_acc", "test_acc", "time_s"}``; cached in
    ``run_dir/confirm.json``."""
    from chanloss.training.trainer import train

    cache = run_dir / "confirm.json"
    config = load_config(raw=raw)
    if cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("config") == config_to_dict(config):
            return stored
    start = time.perf_counter()
    summary_path = run_dir / "summary.json"
    finished = summary_path.exists() and json.loads(summary_path.read_text()).get("finished")
    stored_cfg = run_dir / "config.yaml"
    if stored_cfg.exists() and resolved_config_dict(
        yaml_load(stored_cfg.read_text())
    ) != config_to_dict(config):
        raise ConfigError(f"{run_dir} holds a run of another config; delete it")
    if not finished:
        train(config, run_dir, resume=(run_dir / "last.pt").exists(), verbose=0,
              evaluate_test=False)  # fmt: skip
    val = _last_val(run_dir)
    test = final_test_accuracy(run_dir)
    result = {
        "config": config_to_dict(config),
        "seed": config.seed,
        "val_acc": val,
        "test_acc": test,
        "time_s": time.perf_counter() - start,
    }
    _write_text(cache, json.dumps(result, indent=1) + "\n")
    return result


# -- worker processes ----------------------------------------------------------------------------
def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _trial_task(task: dict[str, Any]) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=task["study"],
        storage=open_storage(task["storage"]),
        pruner=make_pruner(task["pruner"], task["epochs"]),
    )
    trial = optuna.trial.Trial(study, task["trial_id"])
    return run_trial(trial, task["raw"], Path(task["run_dir"]))


def _confirm_task(task: dict[str, Any]) -> dict[str, Any]:
    return run_confirm(task["raw"], Path(task["run_dir"]))


def confirm_runs(
    tasks: list[tuple[dict[str, Any], Path]],
    *,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
    labels: list[str] | None = None,
) -> list[dict[str, Any]]:
    """:func:`run_confirm` for every ``(raw config, run dir)``, ``jobs`` at a time in separate
    processes (``cores // jobs`` torch threads each); the results in the order of ``tasks``."""
    import multiprocessing

    if jobs > 1:
        executor: Any = ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(max(1, _cores() // jobs),),
        )
    else:
        executor = _Inline()
    results = []
    try:
        futures = [
            executor.submit(_confirm_task, {"raw": raw, "run_dir": str(run_dir)})
            for raw, run_dir in tasks
        ]
        for i, fut in enumerate(futures):
            res = fut.result()
            results.append(res)
            if log is not None:
                name = labels[i] if labels else Path(tasks[i][1]).parent.name
                log(
                    f"confirm {name:<5} seed {res['seed']}: val {100 * res['val_acc']:.2f}% "
                    f"({_clock(res['time_s'])})"
                )
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return results


class _Inline:
    """The executor of ``--jobs 1``: runs each task in this process when it is submitted."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as err:  # Ctrl-C included: re-raised by result()
            fut.set_exception(err)
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


# -- the tuner -----------------------------------------------------------------------------------
@dataclass
class _Running:
    trial: Any
    params: dict[str, Any]
    run_dir: Path
    started: float


@dataclass
class Tuner:
    """One ``chanloss tune`` invocation (see :func:`tune`)."""

    config: TrainConfig
    out_dir: Path
    trials: int
    timeout_s: float | None = None
    jobs: int = 1
    confirm_seeds: int = 3
    resume: bool = False
    storage: str | None = None
    pruner: str = "median"
    config_path: str | None = None
    log: Callable[[str], None] = field(default=lambda s: print(s, flush=True))

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {self.trials}")
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {self.jobs}")
        if self.confirm_seeds < 0:
            raise ConfigError(f"--confirm-seeds must be >= 0, got {self.confirm_seeds}")
        if self.pruner not in PRUNERS:
            raise ConfigError(
                f"--pruner: expected one of {', '.join(PRUNERS)}, got {self.pruner!r}"
            )
        if self.config.data.val_fraction <= 0:
            raise ConfigError(
                "tune needs a validation split to score the trials on: set data.val_fraction "
                "(e.g. --set data.val_fraction=0.2); the test split is never used to choose"
            )
        try:
            self.dims, self.fixed = resolve_space(self.config)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not self.dims:
            names = ", ".join(e.name for e in self.config.losses)
            raise ConfigError(
                f"nothing to tune: the config's losses ({names}) declare no search space and "
                "its search: block adds none; add one, e.g. search: {optim: {lr: [0.01, 0.2]}}"
            )
        self.raw = config_to_dict(self.config)
        self.spec = storage_url(self.storage, self.out_dir)
        self.threads = max(1, _cores() // self.jobs)

    # -- study ---------------------------------------------------------------------------------
    def open_study(self) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        local = self.storage is None
        db = self.out_dir / "study.db"
        if local and db.exists() and not self.resume:
            raise ConfigError(
                f"{self.out_dir} already holds a study (study.db); add --resume to continue it "
                "or choose another --out"
            )
        if local and self.resume and not db.exists():
            raise ConfigError(
                f"--resume: {self.out_dir} holds no study (study.db); run without --resume to "
                "start one"
            )
        storage = open_storage(self.spec)
        try:
            names = optuna.study.get_all_study_names(storage)
        except Exception as err:
            raise ConfigError(f"--storage {self.spec}: cannot read it ({err})") from None
        if self.resume and STUDY_NAME not in names:
            raise ConfigError(f"--resume: the storage {self.spec} holds no chanloss study")
        ident = identity(self.config, self.dims, self.fixed)
        existing = optuna.study.get_all_study_summaries(storage) if names else []
        known = {s.study_name: s for s in existing}
        if STUDY_NAME in known:
            attrs = known[STUDY_NAME].user_attrs
            if attrs.get("chanloss_fingerprint") not in (None, _fingerprint(ident)):
                stored = _resolved_identity(attrs.get("chanloss_identity", {}))
            else:
                stored = ident
            if stored != ident:
                keys = sorted(
                    k
                    for k in set(stored.get("config", {})) | set(ident["config"])
                    if stored.get("config", {}).get(k) != ident["config"].get(k)
                )
                if stored.get("space") != ident["space"] or stored.get("fixed") != ident["fixed"]:
                    keys.append("search space")
                raise ConfigError(
                    f"the storage {self.spec} holds a study of a different config (differs in "
                    f"{', '.join(keys) or 'its identity'}); use the same config, or another "
                    "--out/--storage"
                )
        previous = known[STUDY_NAME].n_trials if STUDY_NAME in known else 0
        sampler = optuna.samplers.TPESampler(
            seed=self.config.seed + previous,
            n_startup_trials=max(3, min(10, self.trials // 3)),
            constant_liar=True,
        )
        study = optuna.create_study(
            storage=storage,
            study_name=STUDY_NAME,
            direction="maximize",
            sampler=sampler,
            pruner=make_pruner(self.pruner, self.config.epochs),
            load_if_exists=True,
        )
        if "chanloss_fingerprint" not in study.user_attrs:
            study.set_user_attr("chanloss_fingerprint", _fingerprint(ident))
            study.set_user_attr("chanloss_identity", ident)
        if not study.trials:
            first = start_params(self.config, self.dims)
            study.enqueue_trial(first, user_attrs={"origin": "config"}, skip_if_exists=True)
            low = low_end_params(self.config, self.dims)
            if low != first:
                study.enqueue_trial(low, user_attrs={"origin": "losses off"}, skip_if_exists=True)
        self._recover(study)
        return study

    def _recover(self, study: Any) -> None:
        """Trials left running by a killed process of this machine: failed, and queued again."""
        from optuna.trial import TrialState

        host = socket.gethostname()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = t.user_attrs.get("pid")
            if t.user_attrs.get("host") != host or not isinstance(pid, int) or _alive(pid):
                continue
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(t.params, user_attrs={"origin": f"rerun of trial {t.number}"})
            self.log(f"trial {t.number} was cut short by an earlier run; queued again")

    # -- search --------------------------------------------------------------------------------
    def _counts(self, study: Any) -> dict[str, int]:
        counts = {s: 0 for s in ("COMPLETE", "PRUNED", "RUNNING", "FAIL", "WAITING")}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        return counts

    def _reserve(self, durations: list[float]) -> float:
        """Seconds to keep for the confirmation runs (median full-trial time each)."""
        if not durations or self.confirm_seeds == 0:
            return 0.0
        rounds = math.ceil(2 * self.confirm_seeds / self.jobs)
        return rounds * statistics.median(durations)

    def search(self, study: Any) -> None:
        import multiprocessing

        from optuna.trial import TrialState

        dists = {d.name: distribution(d.param) for d in self.dims}
        trials_dir = self.out_dir / "trials"
        trials_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        deadline = start + self.timeout_s if self.timeout_s else None
        durations = [
            t.user_attrs["time_s"]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "time_s" in t.user_attrs
        ]
        mine: list[float] = []
        if self.jobs > 1:
            executor: Any = ProcessPoolExecutor(
                max_workers=self.jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.threads,),
            )
        else:
            executor = _Inline()
        pending: dict[Future, _Running] = {}
        failures = 0
        counts = self._counts(study)
        finished = counts["COMPLETE"] + counts["PRUNED"]
        threads = f"{self.threads} torch thread{'s' if self.threads > 1 else ''} each"
        self.log(
            f"tune: {self.trials} trials of {self.config.epochs} epochs, {self.jobs} at a time"
            + (f" ({threads})" if self.jobs > 1 else "")
            + f", scored on validation; storage {self.spec}"
            + (f"; {finished} finished earlier" if finished else "")
        )
        for d in self.dims:
            self.log(f"  {d.describe()}")
        try:
            while True:
                counts = self._counts(study)
                started = counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"]
                while (
                    len(pending) < self.jobs
                    and started < self.trials
                    and not self._out_of_time(deadline, durations)
                ):
                    trial = study.ask(dists)
                    trial.set_user_attr("host", socket.gethostname())
                    trial.set_user_attr("pid", os.getpid())
                    run_dir = trials_dir / f"trial-{trial.number:04d}"
                    trial.set_user_attr("run_dir", str(run_dir))
                    raw = apply_params(self.raw, self.dims, self.fixed, trial.params)
                    if self.jobs > 1:
                        task = {
                            "storage": self.spec,
                            "study": STUDY_NAME,
                            "trial_id": trial._trial_id,
                            "raw": raw,
                            "run_dir": str(run_dir),
                            "pruner": self.pruner,
                            "epochs": self.config.epochs,
                        }
                        fut = executor.submit(_trial_task, task)
                    else:
                        fut = executor.submit(run_trial, trial, raw, run_dir)
                    pending[fut] = _Running(trial, dict(trial.params), run_dir, time.time())
                    started += 1
                if not pending:
                    break
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    running = pending[fut]
                    result = fut.result()  # Ctrl-C in a trial: raised here, the trial pending
                    del pending[fut]
                    failures = failures + 1 if result["state"] == "failed" else 0
                    self._tell(study, running, result)
                    if result["state"] == "complete":
                        durations.append(result["time_s"])
                        mine.append(result["time_s"])
                    elif result["state"] in ("pruned", "diverged"):
                        mine.append(result["time_s"])
                    self._progress(study, start, deadline, mine, len(pending))
                    if failures >= _FAILURES_IN_A_ROW:
                        raise ConfigError(
                            f"{failures} trials in a row failed; the last one: {result['error']}"
                        )
        except KeyboardInterrupt:
            for running in pending.values():
                with contextlib.suppress(Exception):
                    study.tell(running.trial, state=TrialState.FAIL, skip_if_finished=True)
                    study.enqueue_trial(
                        running.params,
                        user_attrs={"origin": f"rerun of trial {running.trial.number}"},
                    )
            executor.shutdown(wait=True, cancel_futures=True)
            raise TuneInterrupted(
                f"interrupted; {len(pending)} running trial(s) will be rerun", self.out_dir
            ) from None
        except BaseException:
            for running in pending.values():
                with contextlib.suppress(Exception):
                    study.tell(running.trial, state=TrialState.FAIL, skip_if_finished=True)
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        executor.shutdown(wait=True)

    def _out_of_time(self, deadline: float | None, durations: list[float]) -> bool:
        return deadline is not None and time.time() >= deadline - self._reserve(durations)

    def _tell(self, study: Any, running: _Running, result: dict[str, Any]) -> None:
        from optuna.trial import TrialState

        trial = running.trial
        trial.set_user_attr("time_s", round(result["time_s"], 2))
        trial.set_user_attr("epochs", result["epochs"])
        trial.set_user_attr("outcome", result["state"])
        if result["error"]:
            trial.set_user_attr("error", result["error"][:500])
        state = result["state"]
        if state == "complete":
            study.tell(trial, result["value"])
        elif state in ("pruned", "diverged"):
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)
        what = {
            "complete": f"val {100 * result['value']:.2f}%" if result["value"] is not None else "",
            "pruned": f"pruned after epoch {result['epochs']}",
            "diverged": f"diverged in epoch {result['epochs'] + 1}",
            "failed": f"failed: {result['error']}",
        }[state]
        if state == "pruned":
            last = study.trials[trial.number].intermediate_values
            if last:
                what += f" (val {100 * last[max(last)]:.2f}%)"
        self.log(
            f"trial {trial.number:>3}: {what:<32} {_params_text(running.params)}  "
            f"({_clock(result['time_s'])})"
        )

    def _progress(
        self, study: Any, start: float, deadline: float | None, mine: list[float], running: int
    ) -> None:
        counts = self._counts(study)
        finished = counts["COMPLETE"] + counts["PRUNED"]
        best = ""
        with contextlib.suppress(ValueError):
            b = study.best_trial
            best = f", best val {100 * b.value:.2f}% (trial {b.number})"
        elapsed = time.time() - start
        left = max(0, self.trials - finished)
        eta = ""
        if mine and left:
            per = sum(mine) / len(mine) / self.jobs
            seconds = per * left
            if deadline is not None:
                seconds = min(seconds, max(0.0, deadline - time.time()))
            eta = f", ETA {_clock(seconds)}"
        width = 20
        filled = min(width, round(width * finished / self.trials))
        bar = "#" * filled + "." * (width - filled)
        self.log(
            f"[{bar}] {finished}/{self.trials} trials ({counts['COMPLETE']} complete, "
            f"{counts['PRUNED']} pruned{f', {running} running' if running else ''}){best}; "
            f"elapsed {_clock(elapsed)}{eta}"
        )

    # -- end of tune ---------------------------------------------------------------------------
    def best_raw(self, best: Any) -> dict[str, Any]:
        return apply_params(self.raw, self.dims, self.fixed, best.params)

    def write_best(self, best: Any) -> Path:
        raw = self.best_raw(best)
        header = (
            f"# Chosen by chanloss tune (trial {best.number}, validation accuracy "
            f"{100 * best.value:.2f}%, {self.config.epochs} epochs"
            + (f", from {self.config_path}" if self.config_path else "")
            + ").\n# "
            + _params_text(best.params)
            + "\n# Train it with: chanloss train -c best.yaml\n"
        )
        path = self.out_dir / "best.yaml"
        _write_text(path, header + yaml.safe_dump(raw, sort_keys=False))
        return path

    def confirm(self, best: Any) -> dict[str, Any]:
        seeds = [self.config.seed + 1 + i for i in range(self.confirm_seeds)]
        tuned = self.best_raw(best)
        ce = copy.deepcopy(self.raw)
        ce.pop("search", None)
        ce["losses"] = [{"name": "ce"}]
        tasks = []
        for seed in seeds:
            for label, raw in (("tuned", tuned), ("ce", ce)):
                r = copy.deepcopy(raw)
                r["seed"] = seed
                name = f"trial-{best.number:04d}" if label == "tuned" else "ce"
                tasks.append(
                    (
                        label,
                        {"raw": r, "run_dir": str(self.out_dir / "confirm" / name / f"seed{seed}")},
                    )
                )
        self.log(
            f"confirming trial {best.number} against CE alone over {len(seeds)} seed(s) "
            f"({', '.join(map(str, seeds))}): {len(tasks)} runs"
        )
        done = confirm_runs(
            [(task["raw"], Path(task["run_dir"])) for _, task in tasks],
            jobs=self.jobs,
            log=self.log,
            labels=[label for label, _ in tasks],
        )
        results: dict[str, list[dict[str, Any]]] = {"tuned": [], "ce": []}
        for (label, _), res in zip(tasks, done, strict=True):
            results[label].append(res)
        out: dict[str, Any] = {"seeds": seeds, "trial": best.number}
        for split in ("val", "test"):
            a = [r[f"{split}_acc"] for r in results["tuned"]]
            b = [r[f"{split}_acc"] for r in results["ce"]]
            out[split] = {"tuned": a, "ce": b, "gain": gain_over(a, b)}
        return out

    def run(self) -> dict[str, Any]:
        from chanloss.training.run_dir import RunDir

        # one tune per OUT at a time (each trial's own directory is locked by train())
        run = RunDir(self.out_dir).acquire()
        had_db = (self.out_dir / "study.db").exists()
        try:
            study = self.open_study()
        except BaseException:
            if not had_db:  # a refused start leaves nothing behind
                (self.out_dir / "study.db").unlink(missing_ok=True)
            run.abandon()
            raise
        try:
            return self._run(study)
        finally:
            run.release()

    def _run(self, study: Any) -> dict[str, Any]:
        start = time.time()
        try:
            self.search(study)
        finally:
            with contextlib.suppress(Exception):
                write_trials_csv(study, self.out_dir / "trials.csv", self.dims)
        try:
            best = study.best_trial
        except ValueError:
            counts = self._counts(study)
            raise ConfigError(
                f"no trial finished ({counts['PRUNED']} pruned, {counts['FAIL']} failed); "
                "give more --trials or --timeout, or check the ranges in search:"
            ) from None
        best_path = self.write_best(best)
        self.log(
            f"best: trial {best.number}, val {100 * best.value:.2f}%: {_params_text(best.params)}; "
            f"wrote {best_path}"
        )
        confirmation = self.confirm(best) if self.confirm_seeds else None
        summary = {
            "study": STUDY_NAME,
            "storage": self.spec,
            "config": self.config_path,
            "trials_target": self.trials,
            "counts": self._counts(study),
            "best": {"trial": best.number, "val_acc": best.value, "params": best.params},
            "confirmation": confirmation,
            "space": [d.describe() for d in self.dims],
            "wall_s": round(time.time() - start, 1),
        }
        _write_text(self.out_dir / "tune.json", json.dumps(summary, indent=1, default=str) + "\n")
        write_report(study, self, summary, self.out_dir)
        if confirmation is not None:
            self.log("\n" + confirmation_table(confirmation))
        self.log(f"\nreport in {self.out_dir / 'report.html'}; train the best with: "
                 f"chanloss train -c {best_path}")  # fmt: skip
        return summary


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tune(
    config: TrainConfig, out_dir: str | Path, *, trials: int, **options: Any
) -> dict[str, Any]:
    """Run ``chanloss tune`` (see the module docstring); returns what ``OUT/tune.json`` holds.

    Options: ``timeout_s``, ``jobs``, ``confirm_seeds``, ``resume``, ``storage``, ``pruner``,
    ``config_path``, ``log`` (a function taking one line).
    """
    return Tuner(config, Path(out_dir), trials, **options).run()


# -- outputs -------------------------------------------------------------------------------------
def _pct(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    if math.isnan(std):
        return f"{100 * mean:.2f} %"
    return f"{100 * mean:.2f} ± {100 * std:.2f} %"


def _gain_text(g: dict[str, Any]) -> str:
    if math.isnan(g["diff"]):
        return "-"
    text = f"{100 * g['diff']:+.2f} pts"
    if g["beyond"] is None:
        return text + " (one seed: noise unknown)"
    verdict = "beyond noise" if g["beyond"] else "within noise"
    return f"{text}, 2 SE = {200 * g['se']:.2f}: {verdict}"


def confirmation_table(conf: dict[str, Any]) -> str:
    """The final table: CE alone vs the tuned setting, validation and test, mean ± std."""
    n = len(conf["seeds"])
    rows = [
        ("", f"validation ({n} seed{'s' if n > 1 else ''})", "test (read once)"),
        ("CE alone", _pct(*_mean_std(conf["val"]["ce"])), _pct(*_mean_std(conf["test"]["ce"]))),
        (
            f"tuned (trial {conf['trial']})",
            _pct(*_mean_std(conf["val"]["tuned"])),
            _pct(*_mean_std(conf["test"]["tuned"])),
        ),
        ("gain over CE", _gain_text(conf["val"]["gain"]), _gain_text(conf["test"]["gain"])),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    table = "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
    return table + "\n" + advice(conf)


def advice(conf: dict[str, Any]) -> str:
    """What to do, decided on the validation runs only (the test row is information)."""
    g = conf["val"]["gain"]
    if g["beyond"] is None:
        return "one seed: no noise estimate; rerun with --confirm-seeds 3 before trusting the gain"
    if g["beyond"] and g["diff"] > 0:
        return "the tuned setting beats CE alone on validation beyond noise: use best.yaml"
    if g["beyond"]:
        return "CE alone is better on validation beyond noise: keep CE (do not use best.yaml)"
    return (
        "no difference beyond noise on validation: the tuned losses are not shown to help; "
        "CE alone is as good"
    )


def trial_rows(study: Any, dims: list[Dimension]) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, epochs, time, params, run directory."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {
            "number": t.number,
            "state": t.user_attrs.get("outcome", t.state.name.lower()),
            "val_acc": t.value if t.state.name == "COMPLETE" else "",
            "last_val_acc": t.intermediate_values[max(t.intermediate_values)]
            if t.intermediate_values
            else "",
            "epochs": t.user_attrs.get("epochs", ""),
            "time_s": t.user_attrs.get("time_s", ""),
        }
        row.update({d.name: t.params.get(d.name, "") for d in dims})
        row["origin"] = t.user_attrs.get("origin", "sampler")
        row["run_dir"] = t.user_attrs.get("run_dir", "")
        row["error"] = t.user_attrs.get("error", "")
        rows.append(row)
    return rows


def write_trials_csv(study: Any, path: Path, dims: list[Dimension]) -> None:
    """``trials.csv``: :func:`trial_rows` as CSV."""
    import io

    rows = trial_rows(study, dims)
    fields = ["number", "state", "val_acc", "last_val_acc", "epochs", "time_s"]
    fields += [d.name for d in dims] + ["origin", "run_dir", "error"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write_text(path, buf.getvalue())


def write_report(study: Any, tuner: Tuner, summary: dict[str, Any], out_dir: Path) -> None:
    """``report.html`` with its PNGs (see :mod:`chanloss.training.tune_report`)."""
    from chanloss.training.tune_report import write_report as write

    write(study, tuner.dims, summary, out_dir)
