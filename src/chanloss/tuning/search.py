"""The search loop of ``chanloss tune``: trials asked of the study, trained (in this process or
``--jobs`` workers), told back, until --trials are finished or running, or the time left is
what the runs after the search need."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chanloss.config import ConfigError
from chanloss.core.errors import TuneInterrupted
from chanloss.core.text import clock
from chanloss.tuning.budget import Budget, eta_seconds
from chanloss.tuning.common import Recipe, params_text
from chanloss.tuning.pruners import warmup_epochs
from chanloss.tuning.storage import STUDY_NAME, distribution
from chanloss.tuning.study import NoiseWatch, StudyPlace, counts, durations, recover, set_study_attr
from chanloss.tuning.trials import TrialOutcome, executor_for, run_trial, trial_task

__all__ = ["FAILURES_IN_A_ROW", "Search"]

FAILURES_IN_A_ROW = 3  # consecutive failed trials (errors, not pruning) end the search


@dataclass
class _Running:
    trial: Any
    params: dict[str, Any]
    seed: int
    run_dir: Path


@dataclass
class Search:
    """One invocation's search in ``study``, built from plain values: the ``recipe`` (a
    trial's config), the ``budget`` of the runs after the search (kept free under
    ``timeout_s``), the ``noise`` kept in the study, ``trials`` (the --trials target, or
    ``None``: until the time is spent), ``jobs`` trials at a time (``threads`` torch threads
    each), the study's ``place``, the ``pruner`` and the trials' ``epochs``; trial directories
    under ``out_dir/trials``. :meth:`run` returns the notes it said about the budget."""

    study: Any
    recipe: Recipe
    budget: Budget
    noise: NoiseWatch
    place: StudyPlace
    trials: int | None
    timeout_s: float | None
    jobs: int
    threads: int
    pruner: str
    epochs: int
    log: Callable[[str], None]
    notes: list[str] = field(default_factory=list, init=False)
    # the state of a run: the trials running, the complete trials' seconds (the reserve),
    # this invocation's trials' seconds (the ETA), failed trials in a row, the note said
    _pending: dict[Future, _Running] = field(default_factory=dict, init=False, repr=False)
    _durations: list[float] = field(default_factory=list, init=False, repr=False)
    _mine: list[float] = field(default_factory=list, init=False, repr=False)
    _deadline: float | None = field(default=None, init=False, repr=False)
    _start: float = field(default=0.0, init=False, repr=False)
    _failures: int = field(default=0, init=False, repr=False)
    _budget_said: bool = field(default=False, init=False, repr=False)

    def run(self) -> list[str]:
        """Run trials until --trials are finished or running, or the time left is what the
        runs after the search need; returns the notes said about the budget."""
        from optuna.trial import TrialState

        trials_dir = self.place.out_dir / "trials"
        trials_dir.mkdir(parents=True, exist_ok=True)
        self._start = time.time()
        self._deadline = self._start + self.timeout_s if self.timeout_s else None
        self._durations = durations(self.study)
        executor = executor_for(self.jobs)
        self._header()
        try:
            stopped_by_trials = self._loop(executor, trials_dir)
        except KeyboardInterrupt:
            for running in self._pending.values():
                with contextlib.suppress(Exception):
                    self.study.tell(running.trial, state=TrialState.FAIL, skip_if_finished=True)
                    self.study.enqueue_trial(running.params, user_attrs={
                        "origin": f"rerun of trial {running.trial.number}", "seed": running.seed})  # fmt: skip
            executor.shutdown(wait=True, cancel_futures=True)
            raise TuneInterrupted(
                f"interrupted; {len(self._pending)} running trial(s) will be rerun",
                self.place.out_dir,
            ) from None
        except BaseException:
            for running in self._pending.values():
                with contextlib.suppress(Exception):
                    self.study.tell(running.trial, state=TrialState.FAIL, skip_if_finished=True)
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        executor.shutdown(wait=True)
        if stopped_by_trials and self._deadline is not None and self.timeout_s is not None:
            left = self._deadline - time.time()
            if left > self.timeout_s / 2:
                self._note(
                    f"budget: the search stopped at --trials {self.trials} with "
                    f"{clock(left)} of the {clock(self.timeout_s)} --timeout left; leave "
                    "--trials out to search until the time is spent"
                )
        return self.notes

    def _header(self) -> None:
        tally = counts(self.study)
        finished = tally["COMPLETE"] + tally["PRUNED"]
        threads = f"{self.threads} torch thread{'s' if self.threads > 1 else ''} each"
        target = f"{self.trials} trials" if self.trials else "trials until --timeout"
        self.log(
            f"tune: {target} of {self.epochs} epochs, {self.jobs} at a time"
            + (f" ({threads})" if self.jobs > 1 else "")
            + f", scored on validation (mean of the last epochs); pruner {self.pruner}"
            + (
                f" after a warm-up of {warmup_epochs(self.epochs)} epochs"
                if self.pruner in ("noise", "median")
                else ""
            )  # fmt: skip
            + f"; storage {self.place.shown_spec}"
            + (f"; {finished} finished earlier" if finished else "")
        )
        for d in self.recipe.dims:
            self.log(f"  {d.describe()}")

    def _loop(self, executor: Any, trials_dir: Path) -> bool:
        """Start trials and collect them until none runs; whether --trials stopped it."""
        dists = {d.name: distribution(d.param) for d in self.recipe.dims}
        stopped_by_trials = False
        while True:
            recover(self.study, self.log)  # trials of a worker killed meanwhile: queued again
            tally = counts(self.study)
            started = tally["COMPLETE"] + tally["PRUNED"] + tally["RUNNING"]
            while len(self._pending) < self.jobs:
                if self.trials is not None and started >= self.trials:
                    stopped_by_trials = True
                    break
                if self._out_of_time():
                    break
                self._submit(executor, self.study.ask(dists), trials_dir)
                started += 1
            if not self._pending:
                return stopped_by_trials
            done, _ = wait(list(self._pending), return_when=FIRST_COMPLETED)
            for fut in done:
                self._collect(fut)

    def _submit(self, executor: Any, trial: Any, trials_dir: Path) -> None:
        seed = trial.user_attrs.get("seed")
        seed = self.recipe.seed if seed is None else int(seed)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        run_dir = trials_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        raw = self.recipe.trial(trial.params, seed)
        if self.jobs > 1:
            task = {"storage": self.place.spec, "study": STUDY_NAME,
                    "trial_id": trial._trial_id, "raw": raw, "run_dir": str(run_dir),
                    "pruner": self.pruner, "epochs": self.epochs}  # fmt: skip
            fut = executor.submit(trial_task, task)
        else:
            fut = executor.submit(run_trial, trial, raw, run_dir)
        self._pending[fut] = _Running(trial, dict(trial.params), seed, run_dir)

    def _collect(self, fut: Future) -> None:
        """A finished trial told to the study, the noise and the progress updated."""
        running = self._pending[fut]
        result: TrialOutcome = fut.result()  # Ctrl-C in a trial: raised here
        del self._pending[fut]
        self._failures = self._failures + 1 if result.state == "failed" else 0
        self._tell(running, result)
        if result.state == "complete":
            self._durations.append(result.time_s)
            if "num_classes" not in self.study.user_attrs:
                set_study_attr(self.study, "num_classes", result.num_classes)
            self.noise.update(self.study)
            self._budget_note()
        self._mine.append(result.time_s)
        self._progress()
        if self._failures >= FAILURES_IN_A_ROW:
            raise ConfigError(
                f"{self._failures} trials in a row failed; the last one: {result.error}"
            )

    def _note(self, line: str) -> None:
        self.notes.append(line)
        self.log(line)

    def _budget_note(self) -> None:
        """Once, at the first complete trial: the budget leaves the search few trials."""
        if self.timeout_s is None or self._budget_said or not self._durations:
            return
        self._budget_said = True
        if line := self.budget.short_line(self.timeout_s, self._durations):
            self._note(line)

    def _out_of_time(self) -> bool:
        if self._deadline is None:
            return False
        return time.time() >= self._deadline - self.budget.reserve(self._durations)

    def _tell(self, running: _Running, result: TrialOutcome) -> None:
        from optuna.trial import TrialState

        trial = running.trial
        trial.set_user_attr("time_s", round(result.time_s, 2))
        trial.set_user_attr("epochs", result.epochs)
        trial.set_user_attr("outcome", result.state)
        if result.error:
            trial.set_user_attr("error", result.error[:500])
        state = result.state
        if state == "complete":
            self.study.tell(trial, result.score)
        elif state in ("pruned", "diverged"):
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, state=TrialState.FAIL)
        what = {
            "complete": f"val {100 * result.score:.2f}%" if result.score is not None else "",
            "pruned": f"pruned after epoch {result.epochs}",
            "diverged": f"diverged in epoch {result.epochs + 1}",
            "failed": f"failed: {result.error}",
        }[state]
        if state == "pruned" and result.curve:
            what += f" (val {100 * result.curve[-1]:.2f}%)"
        seed = f" seed {running.seed}" if running.seed != self.recipe.seed else ""
        self.log(
            f"trial {trial.number:>3}: {what:<32} {params_text(running.params)}{seed}  "
            f"({clock(result.time_s)})"
        )

    def _progress(self) -> None:
        tally = counts(self.study)
        finished = tally["COMPLETE"] + tally["PRUNED"]
        best = ""
        with contextlib.suppress(ValueError):
            b = self.study.best_trial
            best = f", best val {100 * b.value:.2f}% (trial {b.number})"
        elapsed = time.time() - self._start
        left = max(0, self.trials - finished) if self.trials else None
        eta = ""
        if self._mine:
            seconds = eta_seconds(now=time.time(), deadline=self._deadline, trials_left=left,
                                  trial_s=sum(self._mine) / len(self._mine), jobs=self.jobs,
                                  after_s=self.budget.reserve(durations(self.study)))  # fmt: skip
            eta = f", ETA {clock(seconds)} (search and the runs after it)"
        running = len(self._pending)
        summary = (
            f"({tally['COMPLETE']} complete, {tally['PRUNED']} pruned"
            f"{f', {running} running' if running else ''}){best}; elapsed {clock(elapsed)}{eta}"
        )
        if self.trials:
            width = 20
            filled = min(width, round(width * finished / self.trials))
            bar = "#" * filled + "." * (width - filled)
            self.log(f"[{bar}] {finished}/{self.trials} trials {summary}")
        else:
            self.log(f"{finished} trials {summary}")
