"""``chanloss tune``: the :class:`Tuner` that runs one invocation (the search loop; what comes
after the search is :mod:`chanloss.tuning.finish`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chanloss.config import ConfigError, TrainConfig, config_to_dict
from chanloss.config.search import resolve_space, start_params
from chanloss.core.atomic import write_json
from chanloss.core.errors import TuneInterrupted
from chanloss.core.masking import mask_secrets
from chanloss.experiments.pool import cores
from chanloss.tuning.budget import Budget, eta_seconds
from chanloss.tuning.common import MaskedLog, Recipe, SearchFacts, print_line
from chanloss.tuning.confirm import Confirmation, check_folds
from chanloss.tuning.finish import (
    best_line,
    best_record,
    last_line,
    learned,
    tune_summary,
    write_best,
    write_ce,
)
from chanloss.tuning.output import (
    chance_line,
    confirmation_table,
    epoch_noise_line,
    pruned_early_line,
    rerun_drop_line,
    write_trials_csv,
)
from chanloss.tuning.pruners import PRUNERS
from chanloss.tuning.search import Search
from chanloss.tuning.storage import storage_url
from chanloss.tuning.study import (
    NoiseWatch,
    StudyPlace,
    durations,
    open_study,
    search_facts,
)

__all__ = ["DEFAULT_TRIALS", "TuneInterrupted", "Tuner", "eta_seconds", "tune"]

DEFAULT_TRIALS = 20  # without --trials and --timeout


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
    log: Callable[[str], None] = field(default=print_line)

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
        raw = config_to_dict(self.config)
        raw.pop("search", None)
        split = self.config.data.split_seed
        self.split_seed = self.config.seed if split is None else split
        raw["data"]["split_seed"] = self.split_seed  # every seed validates on one split
        self.raw = raw
        self.recipe = Recipe(raw, self.dims, self.fixed, self.config.seed)
        self.budget = Budget(top=self.top, folds=self.folds, confirm_seeds=self.confirm_seeds,
                             jobs=self.jobs, val_fraction=self.config.data.val_fraction)  # fmt: skip
        self.spec = storage_url(self.storage, self.out_dir)
        self.shown_spec = mask_secrets(self.spec)  # what is printed and stored: no password
        self.place = StudyPlace(self.spec, self.shown_spec, self.out_dir, self.storage is None,
                                self.resume)  # fmt: skip
        self.log = MaskedLog(self.log)  # every line (a trial's error too) without a password
        self.threads = max(1, cores() // self.jobs)
        self.notes: list[str] = []  # what the terminal said about the budget and the pruner
        self.noise = NoiseWatch(start_params(self.config, self.dims), self.third_seed, self.log)
        self.train_size: int | None = None  # images in the training split (check_folds)
        self.search_s: float | None = None  # how long this invocation's search took

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
        return self.recipe.trial(params, seed)

    def ce_raw(self) -> dict[str, Any]:
        """The config with cross-entropy alone (the optimiser as written)."""
        return self.recipe.ce()

    # -- the study and the time after the search ------------------------------------------------
    def open_study(self) -> Any:
        """Open (or create) the study in the storage; see :func:`~chanloss.tuning.study.open_study`."""
        return open_study(self.place, self.config, self.dims, self.fixed, trials=self.trials,
                          pruner=self.pruner, noise_seed=self.noise_seed, log=self.log)  # fmt: skip

    def update_noise(self, study: Any) -> None:
        """The seed noise kept in the study; see :class:`~chanloss.tuning.study.NoiseWatch`."""
        self.noise.update(study)

    def reserve(self, durations: list[float]) -> float:
        """Seconds to keep for the runs after the search; see :meth:`Budget.reserve`."""
        return self.budget.reserve(durations)

    def after_s(self, stage: str, study: Any) -> float:
        """Seconds the runs after ``stage`` will take; see :meth:`Budget.after_s`."""
        return self.budget.after_s(stage, durations(study))

    def note(self, line: str) -> None:
        self.notes.append(line)
        self.log(line)

    def confirmation(self, after: dict[str, float] | None = None) -> Confirmation:
        """The :class:`~chanloss.tuning.confirm.Confirmation` of this invocation (``after``:
        the seconds of the runs after each of its stages)."""
        return Confirmation(
            recipe=self.recipe,
            out_dir=self.out_dir,
            folds=self.folds,
            confirm_seeds=self.confirm_seeds,
            top=self.top,
            jobs=self.jobs,
            rerun_seed=self.rerun_seed,
            confirm_seed=self.confirm_seed,
            log=self.log,
            train_size=self.train_size,
            after=after or {},
        )

    # -- the whole command ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """The whole command: the folds checked, the study opened, the search, then
        :meth:`finish`; returns what ``OUT/tune.json`` holds."""
        from chanloss.run.run_dir import RunDir

        self.train_size = check_folds(self.raw, self.folds)
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
            return self.finish(study, start)
        finally:
            run.release()

    def search(self, study: Any) -> None:
        """Run trials until --trials are finished or running, or the time left is what the
        runs after the search need (:class:`~chanloss.tuning.search.Search`)."""
        search = Search(
            study=study,
            recipe=self.recipe,
            budget=self.budget,
            noise=self.noise,
            place=self.place,
            trials=self.trials,
            timeout_s=self.timeout_s,
            jobs=self.jobs,
            threads=self.threads,
            pruner=self.pruner,
            epochs=self.config.epochs,
            log=self.log,
        )
        self.notes += search.run()

    def finish(self, study: Any, start: float) -> dict[str, Any]:
        """Everything after the search (``start``: when it began); returns what
        ``tune.json`` holds."""
        from chanloss.tuning.report import write_report  # matplotlib: only when it is written

        facts = search_facts(study, self.config.epochs)
        write_trials_csv(study, self.out_dir / "trials.csv", self.dims,
                         stuck={r["trial"] for r in facts.stuck})  # fmt: skip
        tally = facts.counts
        if not tally["COMPLETE"]:
            raise ConfigError(
                f"no trial finished ({tally['PRUNED']} pruned, {tally['FAIL']} failed); "
                "give more --trials or --timeout, or check the ranges in search:"
            )
        if 2 * facts.early > facts.finished:
            self.note(pruned_early_line(facts.early, facts.finished, self.pruner))
        outcome: dict[str, Any] = {"best": None, "reruns": [], "confirmation": None,
                                   "verdict": None}  # fmt: skip
        if not learned(facts):
            self.note(chance_line(facts.settings[0]["search_score"], 1.0 / facts.num_classes))
        else:
            outcome = self.confirm(facts)
        summary = tune_summary(facts, outcome, shown_spec=self.shown_spec,
                               config_path=self.config_path, trials=self.trials,
                               timeout_s=self.timeout_s, space=[d.describe() for d in self.dims],
                               notes=self.notes, wall_s=time.time() - start,
                               search_s=self.search_s)  # fmt: skip
        if line := epoch_noise_line(summary["noise"]):
            self.log(line)
        write_json(self.out_dir / "tune.json", summary, default=str)
        write_report(study, self.dims, summary, self.out_dir)
        confirmation = outcome["confirmation"]
        if confirmation is not None:
            self.log("\n" + confirmation_table(confirmation, summary["noise"]))
        self.log("\n" + last_line(self.out_dir, outcome["verdict"], outcome["best"] is not None))
        return summary

    def confirm(self, facts: SearchFacts) -> dict[str, Any]:
        """Choose, write best.yaml and ce.yaml, confirm, decide; what tune.json holds of it."""
        after = {stage: self.budget.after_s(stage, facts.durations)
                 for stage in ("choose", "folds", "final")}  # fmt: skip
        confirmation = self.confirmation(after)
        winner, reruns = confirmation.choose(facts.settings)
        # the re-runs are not pooled into the noise: their search scores are the maxima of many
        # noisy trials, so (search, re-run) pairs differ by more than seeds alone make them
        raw, ce = self.recipe.trial(winner["params"]), self.recipe.ce()
        where = {"epochs": self.config.epochs, "config_path": self.config_path}
        best_path = write_best(self.out_dir, raw, winner, None, **where)
        write_ce(self.out_dir, ce)
        self.log(best_line(winner, self.rerun_seed, best_path))
        if line := rerun_drop_line(winner, facts.noise):
            self.note(line)
        confirmed = confirmation.run(winner, facts.noise)
        verdict = confirmed["verdict"] if confirmed is not None else None
        if confirmed is not None:
            write_best(self.out_dir, raw, winner, verdict, **where)
        reruns = [{k: r[k] for k in ("trial", "params", "search_score", "rerun_score")}
                  for r in reruns]  # fmt: skip
        return {"best": best_record(winner), "reruns": reruns, "confirmation": confirmed,
                "verdict": verdict}  # fmt: skip


def tune(
    config: TrainConfig, out_dir: str | Path, *, trials: int | None = None, **options: Any
) -> dict[str, Any]:
    """Run ``chanloss tune`` (see :mod:`chanloss.tuning`); returns what ``OUT/tune.json`` holds.

    Options: ``timeout_s``, ``jobs``, ``folds``, ``confirm_seeds``, ``top``, ``resume``,
    ``storage``, ``pruner``, ``config_path``, ``log`` (a function taking one line).
    """
    return Tuner(config, Path(out_dir), trials, **options).run()
