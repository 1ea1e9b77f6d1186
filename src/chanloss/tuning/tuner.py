"""``chanloss tune``: the :class:`Tuner` that runs one invocation (the search loop; what comes
after the search is :mod:`chanloss.tuning.finish`)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import socket
import statistics
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chanloss.config import ConfigError, TrainConfig, config_to_dict
from chanloss.config.search import apply_params, resolve_space, start_params
from chanloss.core.errors import TuneInterrupted
from chanloss.core.masking import mask_secrets
from chanloss.core.text import clock
from chanloss.tuning.budget import eta_seconds, short_budget_line
from chanloss.tuning.common import cores, params_text
from chanloss.tuning.pruners import PRUNERS, warmup_epochs
from chanloss.tuning.stats import STUCK_POINTS, noise_text, pooled_seed_std, without_stuck
from chanloss.tuning.storage import STUDY_NAME, distribution, storage_url
from chanloss.tuning.study import (
    THIRD_ORIGIN,
    open_study,
    recover,
    search_stuck,
    search_stuck_text,
    seed_groups,
    set_study_attr,
)
from chanloss.tuning.trials import TrialOutcome, executor_for, run_trial, trial_task

__all__ = ["DEFAULT_TRIALS", "TuneInterrupted", "Tuner", "eta_seconds", "tune"]

DEFAULT_TRIALS = 20  # without --trials and --timeout
_FAILURES_IN_A_ROW = 3  # consecutive failed trials (errors, not pruning) end the search


@dataclass
class _Running:
    trial: Any
    params: dict[str, Any]
    seed: int
    run_dir: Path


@dataclass
class Tuner:
    """One ``chanloss tune`` invocation (see :func:`tune`)."""

    config: TrainConfig
    out_dir: Path
    trials: int | None = None
    timeout_s: float | None = None
    jobs: int = 1
    folds: int = 5
    confirm_seeds: int = 3
    top: int = 3
    resume: bool = False
    storage: str | None = None
    pruner: str = "noise"
    config_path: str | None = None
    log: Callable[[str], None] = field(default=lambda s: print(s, flush=True))

    def __post_init__(self) -> None:
        if self.trials is None and self.timeout_s is None:
            self.trials = DEFAULT_TRIALS
        if self.trials is not None and self.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {self.trials}")
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {self.jobs}")
        if self.folds == 1 or self.folds < 0:
            raise ConfigError(
                f"--folds: expected at least 2 folds (or 0 for the seed-only confirmation of "
                f"--confirm-seeds), got {self.folds}"
            )
        if self.confirm_seeds < 0:
            raise ConfigError(f"--confirm-seeds must be >= 0, got {self.confirm_seeds}")
        if self.top < 0:
            raise ConfigError(f"--top must be >= 0, got {self.top}")
        if self.pruner not in PRUNERS:
            raise ConfigError(
                f"--pruner: expected one of {', '.join(PRUNERS)}, got {self.pruner!r}"
            )
        from chanloss.data import has_own_val

        data = self.config.data
        if data.val_fraction <= 0 and not has_own_val(data.name, data.root):
            raise ConfigError(
                "tune needs a validation split to score the trials on: set data.val_fraction "
                "(e.g. --set data.val_fraction=0.2), or give an image folder a val/ folder; "
                "the test split is never used to choose"
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
        self.raw.pop("search", None)
        split = self.config.data.split_seed
        self.split_seed = self.config.seed if split is None else split
        self.raw["data"]["split_seed"] = self.split_seed  # every seed validates on one split
        self.spec = storage_url(self.storage, self.out_dir)
        self.shown_spec = mask_secrets(self.spec)  # what is printed and stored: no password
        log = self.log  # every line (a trial's error too) without a password
        self.log = lambda line: log(mask_secrets(line))
        self.threads = max(1, cores() // self.jobs)
        self.notes: list[str] = []  # what the terminal said about the budget and the pruner
        self.stuck_said: set[int] = set()  # stuck search trials already said
        self.train_size: int | None = None  # images in the training split (check_folds)
        self.after: dict[str, float] = {}  # seconds after each stage past the search (the ETA)
        self.search_s: float | None = None  # how long this invocation's search took
        self.budget_said = False  # the short-budget note, once

    # -- seeds: the search's, the noise trial's, the re-runs', the confirmation's ----------------
    @property
    def noise_seed(self) -> int:
        return self.config.seed + 1

    @property
    def rerun_seed(self) -> int:
        return self.config.seed + 2

    @property
    def confirm_seed(self) -> int:
        return self.config.seed + 3

    @property
    def third_seed(self) -> int:
        return self.config.seed + 100

    def trial_raw(self, params: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        """The training config of a setting (``params``) on ``seed`` (default the config's)."""
        raw = apply_params(self.raw, self.dims, self.fixed, params)
        raw["seed"] = self.config.seed if seed is None else seed
        return raw

    def ce_raw(self) -> dict[str, Any]:
        """The config with cross-entropy alone (the optimiser as written)."""
        raw = copy.deepcopy(self.raw)
        raw["losses"] = [{"name": "ce"}]
        return raw

    # -- study ---------------------------------------------------------------------------------
    def open_study(self) -> Any:
        """Open (or create) the study in the storage; see :func:`~chanloss.tuning.study.open_study`."""
        return open_study(self)

    def counts(self, study: Any) -> dict[str, int]:
        counts = {s: 0 for s in ("COMPLETE", "PRUNED", "RUNNING", "FAIL", "WAITING")}
        for t in study.get_trials(deepcopy=False):
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        return counts

    def runs_after_search(self) -> int:
        """Full training runs after the search: the re-run top trials, then the k-fold
        confirmation (2 per fold) and the two final runs, or 2 per --confirm-seeds seed."""
        confirm = 2 * self.folds + 2 if self.folds else 2 * self.confirm_seeds
        return self.top + confirm

    def after_s(self, stage: str, study: Any) -> float:
        """Seconds the runs after ``stage`` (``choose``, ``folds``, ``final``) will take, at the
        median trial's time (fold and final runs on the whole training split's images)."""
        durations = self.durations(study)
        if not durations:
            return 0.0
        run = statistics.median(durations) / max(1.0 - self.config.data.val_fraction, 0.5)
        runs = {"choose": 2 * self.folds + 2 if self.folds else 2 * self.confirm_seeds,
                "folds": 2 if self.folds else 0, "final": 0}[stage]  # fmt: skip
        return math.ceil(runs / self.jobs) * run

    def reserve(self, durations: list[float]) -> float:
        """Seconds to keep for the runs after the search: the median full-trial time for each
        re-run, and that over ``1 - data.val_fraction`` for each fold and final run (they
        train on as many images per run as the whole training split holds)."""
        if not durations:
            return 0.0
        median = statistics.median(durations)
        whole = 1.0 / max(1.0 - self.config.data.val_fraction, 0.5)
        confirm = self.runs_after_search() - self.top
        return (math.ceil(self.top / self.jobs) + math.ceil(confirm / self.jobs) * whole) * median

    def durations(self, study: Any) -> list[float]:
        """The seconds of the complete trials (what the reserve and the ETA are made of)."""
        from optuna.trial import TrialState

        return [
            t.user_attrs["time_s"]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "time_s" in t.user_attrs
        ]

    def update_noise(self, study: Any) -> None:
        """The seed noise of the score, from the settings trained on several seeds without
        their stuck runs, kept in the study (``noise_std``: the pruner reads it); stuck trials
        said once; a third seed of the config queued when its two seeds lie a stuck run's gap
        apart (with two, neither can be told stuck)."""
        for record in search_stuck(study):
            if record["trial"] not in self.stuck_said:
                self.stuck_said.add(record["trial"])
                self.log(f"stuck: {search_stuck_text(record)}; left out of the noise")
        groups = seed_groups(study)
        std, dof = pooled_seed_std(without_stuck(list(groups.values())))
        if dof and (study.user_attrs.get("noise_dof"), study.user_attrs.get("noise_std")) != (
            dof,
            std,
        ):
            set_study_attr(study, "noise_std", std)
            set_study_attr(study, "noise_dof", dof)
            self.log(
                f"noise: on this split, the seed standard deviation of a trial's score is "
                f"{noise_text(std, dof)}; differences below ±{200 * std:.2f} points are noise"
            )
        first = json.dumps(start_params(self.config, self.dims), sort_keys=True)
        twins = groups.get(first, [])
        origins = {t.user_attrs.get("origin") for t in study.get_trials(deepcopy=False)}
        if (
            len(twins) == 2
            and abs(twins[0] - twins[1]) >= STUCK_POINTS
            and THIRD_ORIGIN not in origins
        ):
            study.enqueue_trial(json.loads(first), user_attrs={"origin": THIRD_ORIGIN,
                                                               "seed": self.third_seed})  # fmt: skip
            self.log(
                f"noise: the config's two seeds lie {100 * abs(twins[0] - twins[1]):.1f} points "
                f"apart; a third seed ({self.third_seed}) is queued to tell a stuck run from noise"
            )

    # -- search --------------------------------------------------------------------------------
    def search(self, study: Any) -> None:
        """Run trials until --trials are finished or running, or the time left is what the
        runs after the search need."""
        from optuna.trial import TrialState

        dists = {d.name: distribution(d.param) for d in self.dims}
        trials_dir = self.out_dir / "trials"
        trials_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        deadline = start + self.timeout_s if self.timeout_s else None
        durations = self.durations(study)
        mine: list[float] = []
        executor = executor_for(self.jobs)
        pending: dict[Future, _Running] = {}
        failures = 0
        counts = self.counts(study)
        finished = counts["COMPLETE"] + counts["PRUNED"]
        threads = f"{self.threads} torch thread{'s' if self.threads > 1 else ''} each"
        target = f"{self.trials} trials" if self.trials else "trials until --timeout"
        self.log(
            f"tune: {target} of {self.config.epochs} epochs, {self.jobs} at a time"
            + (f" ({threads})" if self.jobs > 1 else "")
            + f", scored on validation (mean of the last epochs); pruner {self.pruner}"
            + (
                f" after a warm-up of {warmup_epochs(self.config.epochs)} epochs"
                if self.pruner in ("noise", "median")
                else ""
            )  # fmt: skip
            + f"; storage {self.shown_spec}"
            + (f"; {finished} finished earlier" if finished else "")
        )
        for d in self.dims:
            self.log(f"  {d.describe()}")
        stopped_by_trials = False
        try:
            while True:
                recover(study, self.log)  # trials of a worker killed meanwhile: queued again
                counts = self.counts(study)
                started = counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"]
                while len(pending) < self.jobs:
                    if self.trials is not None and started >= self.trials:
                        stopped_by_trials = True
                        break
                    if self._out_of_time(deadline, durations):
                        break
                    trial = study.ask(dists)
                    seed = trial.user_attrs.get("seed")
                    seed = self.config.seed if seed is None else int(seed)
                    trial.set_user_attr("seed", seed)
                    trial.set_user_attr("host", socket.gethostname())
                    trial.set_user_attr("pid", os.getpid())
                    run_dir = trials_dir / f"trial-{trial.number:04d}"
                    trial.set_user_attr("run_dir", str(run_dir))
                    raw = self.trial_raw(trial.params, seed)
                    if self.jobs > 1:
                        task = {"storage": self.spec, "study": STUDY_NAME,
                                "trial_id": trial._trial_id, "raw": raw, "run_dir": str(run_dir),
                                "pruner": self.pruner, "epochs": self.config.epochs}  # fmt: skip
                        fut = executor.submit(trial_task, task)
                    else:
                        fut = executor.submit(run_trial, trial, raw, run_dir)
                    pending[fut] = _Running(trial, dict(trial.params), seed, run_dir)
                    started += 1
                if not pending:
                    break
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    running = pending[fut]
                    result: TrialOutcome = fut.result()  # Ctrl-C in a trial: raised here
                    del pending[fut]
                    failures = failures + 1 if result.state == "failed" else 0
                    self._tell(study, running, result)
                    if result.state == "complete":
                        durations.append(result.time_s)
                        if "num_classes" not in study.user_attrs:
                            set_study_attr(study, "num_classes", result.num_classes)
                        self.update_noise(study)
                        self._budget_note(durations)
                    mine.append(result.time_s)
                    self._progress(study, start, deadline, mine, len(pending))
                    if failures >= _FAILURES_IN_A_ROW:
                        raise ConfigError(
                            f"{failures} trials in a row failed; the last one: {result.error}"
                        )
        except KeyboardInterrupt:
            for running in pending.values():
                with contextlib.suppress(Exception):
                    study.tell(running.trial, state=TrialState.FAIL, skip_if_finished=True)
                    study.enqueue_trial(running.params, user_attrs={
                        "origin": f"rerun of trial {running.trial.number}", "seed": running.seed})  # fmt: skip
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
        if stopped_by_trials and deadline is not None:
            left = deadline - time.time()
            if left > self.timeout_s / 2:
                self.note(
                    f"budget: the search stopped at --trials {self.trials} with "
                    f"{clock(left)} of the {clock(self.timeout_s)} --timeout left; leave "
                    "--trials out to search until the time is spent"
                )

    def note(self, line: str) -> None:
        self.notes.append(line)
        self.log(line)

    def _budget_note(self, durations: list[float]) -> None:
        """Once, at the first complete trial: the budget leaves the search few trials."""
        if self.timeout_s is None or self.budget_said or not durations:
            return
        self.budget_said = True
        whole = 1.0 / max(1.0 - self.config.data.val_fraction, 0.5)
        line = short_budget_line(timeout_s=self.timeout_s, trial_s=statistics.median(durations),
                                 top=self.top, folds=self.folds, jobs=self.jobs, whole=whole)  # fmt: skip
        if line:
            self.note(line)

    def _out_of_time(self, deadline: float | None, durations: list[float]) -> bool:
        return deadline is not None and time.time() >= deadline - self.reserve(durations)

    def _tell(self, study: Any, running: _Running, result: TrialOutcome) -> None:
        from optuna.trial import TrialState

        trial = running.trial
        trial.set_user_attr("time_s", round(result.time_s, 2))
        trial.set_user_attr("epochs", result.epochs)
        trial.set_user_attr("outcome", result.state)
        if result.error:
            trial.set_user_attr("error", result.error[:500])
        state = result.state
        if state == "complete":
            study.tell(trial, result.score)
        elif state in ("pruned", "diverged"):
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)
        what = {
            "complete": f"val {100 * result.score:.2f}%" if result.score is not None else "",
            "pruned": f"pruned after epoch {result.epochs}",
            "diverged": f"diverged in epoch {result.epochs + 1}",
            "failed": f"failed: {result.error}",
        }[state]
        if state == "pruned" and result.curve:
            what += f" (val {100 * result.curve[-1]:.2f}%)"
        seed = f" seed {running.seed}" if running.seed != self.config.seed else ""
        self.log(
            f"trial {trial.number:>3}: {what:<32} {params_text(running.params)}{seed}  "
            f"({clock(result.time_s)})"
        )

    def _progress(
        self, study: Any, start: float, deadline: float | None, mine: list[float], running: int
    ) -> None:
        counts = self.counts(study)
        finished = counts["COMPLETE"] + counts["PRUNED"]
        best = ""
        with contextlib.suppress(ValueError):
            b = study.best_trial
            best = f", best val {100 * b.value:.2f}% (trial {b.number})"
        elapsed = time.time() - start
        left = max(0, self.trials - finished) if self.trials else None
        eta = ""
        if mine:
            seconds = eta_seconds(now=time.time(), deadline=deadline, trials_left=left,
                                  trial_s=sum(mine) / len(mine), jobs=self.jobs,
                                  after_s=self.reserve(self.durations(study)))  # fmt: skip
            eta = f", ETA {clock(seconds)} (search and the runs after it)"
        tally = (
            f"({counts['COMPLETE']} complete, {counts['PRUNED']} pruned"
            f"{f', {running} running' if running else ''}){best}; elapsed {clock(elapsed)}{eta}"
        )
        if self.trials:
            width = 20
            filled = min(width, round(width * finished / self.trials))
            bar = "#" * filled + "." * (width - filled)
            self.log(f"[{bar}] {finished}/{self.trials} trials {tally}")
        else:
            self.log(f"{finished} trials {tally}")

    # -- the whole command ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from chanloss.run.run_dir import RunDir
        from chanloss.tuning.confirm import check_folds
        from chanloss.tuning.finish import finish

        check_folds(self)
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
            start = time.time()
            self.search(study)
            self.search_s = time.time() - start
            return finish(self, study, start)
        finally:
            run.release()


def tune(
    config: TrainConfig, out_dir: str | Path, *, trials: int | None = None, **options: Any
) -> dict[str, Any]:
    """Run ``chanloss tune`` (see :mod:`chanloss.tuning`); returns what ``OUT/tune.json`` holds.

    Options: ``timeout_s``, ``jobs``, ``folds``, ``confirm_seeds``, ``top``, ``resume``,
    ``storage``, ``pruner``, ``config_path``, ``log`` (a function taking one line).
    """
    return Tuner(config, Path(out_dir), trials, **options).run()
