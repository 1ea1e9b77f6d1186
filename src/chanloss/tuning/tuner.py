"""``chanloss tune``: the :class:`Tuner` that runs one invocation."""

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
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chanloss.errors import TuneInterrupted
from chanloss.training.config import ConfigError, TrainConfig, config_to_dict
from chanloss.training.search import apply_params, resolve_space
from chanloss.tuning.common import clock, cores, params_text, write_text
from chanloss.tuning.output import confirmation_table, write_trials_csv
from chanloss.tuning.pruners import PRUNERS
from chanloss.tuning.stats import gain_over
from chanloss.tuning.storage import STUDY_NAME, distribution, storage_url
from chanloss.tuning.study import open_study
from chanloss.tuning.trials import Inline, confirm_runs, init_worker, run_trial, trial_task

__all__ = ["TuneInterrupted", "Tuner", "tune"]

_FAILURES_IN_A_ROW = 3  # consecutive failed trials (errors, not pruning) end the search


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
        self.spec = storage_url(self.storage, self.out_dir)
        self.threads = max(1, cores() // self.jobs)

    # -- study ---------------------------------------------------------------------------------
    def open_study(self) -> Any:
        """Open (or create) the study in the storage; see :func:`~chanloss.tuning.study.open_study`."""
        return open_study(self)

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
                initializer=init_worker,
                initargs=(self.threads,),
            )
        else:
            executor = Inline()
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
                        fut = executor.submit(trial_task, task)
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
            f"trial {trial.number:>3}: {what:<32} {params_text(running.params)}  "
            f"({clock(result['time_s'])})"
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
            eta = f", ETA {clock(seconds)}"
        width = 20
        filled = min(width, round(width * finished / self.trials))
        bar = "#" * filled + "." * (width - filled)
        self.log(
            f"[{bar}] {finished}/{self.trials} trials ({counts['COMPLETE']} complete, "
            f"{counts['PRUNED']} pruned{f', {running} running' if running else ''}){best}; "
            f"elapsed {clock(elapsed)}{eta}"
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
            + params_text(best.params)
            + "\n# Train it with: chanloss train -c best.yaml\n"
        )
        path = self.out_dir / "best.yaml"
        write_text(path, header + yaml.safe_dump(raw, sort_keys=False))
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
            f"best: trial {best.number}, val {100 * best.value:.2f}%: {params_text(best.params)}; "
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
        write_text(self.out_dir / "tune.json", json.dumps(summary, indent=1, default=str) + "\n")
        from chanloss.tuning.report import write_report

        write_report(study, self.dims, summary, self.out_dir)
        if confirmation is not None:
            self.log("\n" + confirmation_table(confirmation))
        self.log(f"\nreport in {self.out_dir / 'report.html'}; train the best with: "
                 f"chanloss train -c {best_path}")  # fmt: skip
        return summary


def tune(
    config: TrainConfig, out_dir: str | Path, *, trials: int, **options: Any
) -> dict[str, Any]:
    """Run ``chanloss tune`` (see the module docstring); returns what ``OUT/tune.json`` holds.

    Options: ``timeout_s``, ``jobs``, ``confirm_seeds``, ``resume``, ``storage``, ``pruner``,
    ``config_path``, ``log`` (a function taking one line).
    """
    return Tuner(config, Path(out_dir), trials, **options).run()
