"""After the search: the winner chosen on fresh seeds, the confirmation against CE alone
(paired k-fold cross-validation, or seeds only), one look at the test split, the verdict:
a :class:`Confirmation` built from plain values."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chanloss.config import ConfigError
from chanloss.tuning.common import Recipe
from chanloss.tuning.output import stuck_text
from chanloss.tuning.recommend import decide
from chanloss.tuning.stats import gain_over, paired_fold_test, stuck_flags
from chanloss.tuning.trials import RunOutcome, confirm_runs

__all__ = [
    "Confirmation",
    "check_folds",
    "cross_validate",
    "fold_schedule",
]


def check_folds(raw: dict[str, Any], folds: int) -> int | None:
    """``--folds K`` needs K images of every class in the training split of ``raw`` (one line,
    exit 2); returns the images in that split (``None`` without folds)."""
    if not folds:
        return None
    from chanloss.config import load_config
    from chanloss.run.builders import build_data

    raw = copy.deepcopy(raw)
    raw["data"]["val_fraction"] = 0.0
    labels = build_data(load_config(raw=raw)).train.labels
    counts = labels.bincount()
    least = int(counts.argmin())
    if int(counts.min()) < folds:
        raise ConfigError(
            f"--folds {folds}: every class needs at least {folds} training images; "
            f"class {least} has {int(counts.min())}; use fewer --folds"
        )
    return len(labels)


@dataclass
class Confirmation:
    """The runs after the search, built from plain values: the winner chosen among the
    ``top`` settings re-run on ``rerun_seed``, then confirmed against CE alone, by paired
    k-fold cross-validation on ``folds`` folds (fold ``k`` on ``confirm_seed + k``, then both
    once on the whole training split) or on ``confirm_seeds`` fresh seeds (``folds`` 0), and
    the verdict (:func:`~chanloss.tuning.recommend.decide`). ``recipe``: the configs of the
    settings and of CE alone; run directories under ``out_dir``, ``jobs`` at a time;
    ``train_size``: the images of the training split (counted when ``None``); ``after``: the
    seconds of the runs after each stage (``choose``, ``folds``: the ETA of the log lines)."""

    recipe: Recipe
    out_dir: Path
    folds: int
    confirm_seeds: int
    top: int
    jobs: int
    rerun_seed: int
    confirm_seed: int
    log: Callable[[str], None]
    train_size: int | None = None
    after: dict[str, float] = field(default_factory=dict)

    def choose(self, settings: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The winner among ``settings`` (best search score first): the ``--top`` best re-run
        on one fresh seed (the same for all, so they compare on the same split and seed),
        chosen by that re-run's score; the search's best alone when ``--top 0``. Returns the
        winner and the re-run rows."""
        top = settings[: self.top]
        if len(top) < 2:  # nothing to choose between
            winner = settings[0]
            return {**winner, "rerun_score": None, "trial": winner["trials"][0]}, []
        seed = self.rerun_seed
        tasks = [(self.recipe.trial(s["params"], seed),
                  self.out_dir / "rerun" / f"trial-{s['trials'][0]:04d}" / f"seed{seed}")
                 for s in top]  # fmt: skip
        self.log(f"re-running the {len(top)} best settings on a fresh seed ({seed}) to choose")
        done = confirm_runs(tasks, jobs=self.jobs, log=self.log, read_test=False,
                            after_s=self.after.get("choose", 0.0),
                            labels=[f"trial {s['trials'][0]}" for s in top])  # fmt: skip
        rows = [{**s, "trial": s["trials"][0], "rerun_score": r.score}
                for s, r in zip(top, done, strict=True)]  # fmt: skip
        winner = max(rows, key=lambda r: (r["rerun_score"], r["search_score"]))
        return winner, rows

    def run(self, winner: dict[str, Any], noise: float | None) -> dict[str, Any] | None:
        """The confirmation of ``winner`` with its ``verdict`` (``noise``: the measured seed
        noise, or ``None``); ``None`` with neither --folds nor --confirm-seeds."""
        if self.folds:
            confirmation = self.on_folds(winner, noise)
        elif self.confirm_seeds:
            confirmation = self.on_seeds(winner)
        else:
            return None
        confirmation["verdict"] = decide(confirmation["val"]["gain"], noise=noise,
                                         stuck=len(confirmation["stuck"]),
                                         runs=confirmation["runs"])  # fmt: skip
        return confirmation

    def on_folds(self, winner: dict[str, Any], noise: float | None) -> dict[str, Any]:
        """Paired, stratified k-fold confirmation on the whole training split: the winner and
        CE alone on the same K folds with the same seeds (``confirm_seed + k`` on fold ``k``),
        then both trained on the full training split (seed ``confirm_seed``) and the test
        split read once each."""
        k, seed = self.folds, self.confirm_seed
        name = f"trial-{winner['trial']:04d}"
        tuned, ce = self.recipe.trial(winner["params"], seed), {**self.recipe.ce(), "seed": seed}
        self.log(f"confirming trial {winner['trial']} against CE alone on {k} folds (fold k on "
                 f"seed {seed} + k): {2 * k} runs, then both once on the full training split")  # fmt: skip
        val = cross_validate(tuned, ce, k, self.out_dir / "confirm", jobs=self.jobs,
                             log=self.log, names=(name, "ce"), noise=noise,
                             train_size=self.train_size,
                             after_s=self.after.get("folds", 0.0))  # fmt: skip
        val.pop("curves")
        for record in val["stuck"]:
            record["arm"] = "tuned" if record["arm"] == name else record["arm"]
        finals = []
        for label, raw in ((name, tuned), ("ce", ce)):
            r = copy.deepcopy(raw)
            r["data"].update(val_fraction=0.0, folds=0)
            finals.append((r, self.out_dir / "final" / label))
        final = confirm_runs(finals, jobs=self.jobs, log=self.log,
                             labels=["tuned full", "ce full"])  # fmt: skip
        return {
            "mode": "folds",
            "folds": k,
            "seed": seed,
            "trial": winner["trial"],
            "val": val,
            "stuck": val.pop("stuck"),
            "runs": val.pop("runs"),
            "test": {
                "tuned": [final[0].test_acc],
                "ce": [final[1].test_acc],
                "gain": gain_over([final[0].test_acc], [final[1].test_acc]),
            },
        }

    def on_seeds(self, winner: dict[str, Any]) -> dict[str, Any]:
        """The seed-only confirmation (``--folds 0``): winner and CE on ``--confirm-seeds``
        fresh seeds on the search's validation split (Welch), test read once per run."""
        seeds = [self.confirm_seed + i for i in range(self.confirm_seeds)]
        tasks, labels = [], []
        for seed in seeds:
            for label, raw in (("tuned", self.recipe.trial(winner["params"], seed)),
                               ("ce", {**self.recipe.ce(), "seed": seed})):  # fmt: skip
                name = f"trial-{winner['trial']:04d}" if label == "tuned" else "ce"
                tasks.append((raw, self.out_dir / "confirm" / name / f"seed{seed}"))
                labels.append(label)
        self.log(f"confirming trial {winner['trial']} against CE alone over {len(seeds)} "
                 f"seed(s) ({', '.join(map(str, seeds))}): {len(tasks)} runs")  # fmt: skip
        done = confirm_runs(tasks, jobs=self.jobs, log=self.log, labels=labels,
                            after_s=self.after.get("folds", 0.0))  # fmt: skip
        out: dict[str, Any] = {"mode": "seeds", "seeds": seeds, "trial": winner["trial"],
                               "runs": len(tasks)}  # fmt: skip
        for split, get in (("val", lambda r: r.score), ("test", lambda r: r.test_acc)):
            a = [get(r) for lab, r in zip(labels, done, strict=True) if lab == "tuned"]
            b = [get(r) for lab, r in zip(labels, done, strict=True) if lab == "ce"]
            out[split] = {"tuned": a, "ce": b, "gain": gain_over(a, b)}
        # a run far below the same arm's other seeds (no rerun: every seed is a fresh one)
        scores = {"tuned": out["val"]["tuned"], "ce": out["val"]["ce"]}
        out["stuck"] = [
            {**r, "fold": None} for r in _stuck_records(scores, {"tuned": seeds, "ce": seeds})
        ]
        return out


def fold_schedule(raw: dict[str, Any], folds: int) -> dict[str, Any]:
    """``raw`` stretched for a run on ``folds - 1`` of ``folds`` folds: ``epochs``,
    ``schedule.warmup_epochs``, ``step_size`` and ``milestones`` times ``folds / (folds - 1)``
    (epochs rounded), so that the fold's run takes about as many optimiser steps, on the same
    learning-rate schedule, as the run on the whole training split that the test split judges.
    Without it a fold trains ``(K-1)/K`` of the steps, and a loss that only learns faster looks
    better on the folds than on test (docs/tuning.md, "How long")."""
    from chanloss.config import load_config

    config = load_config(raw=raw)
    factor = folds / (folds - 1)
    out = copy.deepcopy(raw)
    out["epochs"] = max(1, round(config.epochs * factor))
    schedule = dict(out.get("schedule") or {})
    schedule["warmup_epochs"] = config.schedule.warmup_epochs * factor
    if config.schedule.step_size is not None:
        schedule["step_size"] = max(1, round(config.schedule.step_size * factor))
    if config.schedule.milestones is not None:
        schedule["milestones"] = sorted(
            {max(1, round(m * factor)) for m in config.schedule.milestones}
        )
    out["schedule"] = schedule
    return out


RERUN_SEED_OFFSET = 1000  # a fold pair with a stuck run is rerun on seed + 1000 + k


def _fold_task(raw: dict[str, Any], folds: int, fold: int, seed: int, run_dir: Path) -> tuple:
    r = fold_schedule(raw, folds)
    if r["data"].get("split_seed") is None:  # the folds must not move with the seed
        r["data"]["split_seed"] = int(r.get("seed", 0))
    r["data"].update(val_fraction=0.0, folds=folds, fold=fold)
    r["seed"] = seed
    return r, run_dir


def _stuck_records(scores: dict[str, list[float]], seeds: dict[str, list[int]],
                   rerun: bool = False, n_val: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """The runs of each arm far below the arm's other folds (:func:`stuck_flags`; ``n_val``:
    the validation images of a fold)."""
    records = []
    for arm, values in scores.items():
        for i, flagged in enumerate(stuck_flags(values, n_val=n_val)):
            if not flagged:
                continue
            others = [v for j, v in enumerate(values) if j != i]
            records.append({"fold": i, "arm": arm, "seed": seeds[arm][i], "score": values[i],
                            "others": [min(others), max(others)], "rerun": rerun})  # fmt: skip
    return records


def cross_validate(
    tuned: dict[str, Any],
    base: dict[str, Any],
    folds: int,
    out_dir: Path,
    *,
    jobs: int = 1,
    log: Any = None,
    names: tuple[str, str] = ("tuned", "ce"),
    noise: float | None = None,
    train_size: int | None = None,
    after_s: float = 0.0,
) -> dict[str, Any]:
    """The paired k-fold comparison of two training configs (``raw`` dicts with their seeds):
    both trained on the same ``folds`` stratified folds of the training split (drawn with the
    configs' ``data.split_seed``, or their seed), each fold held out once as validation, with
    the schedule stretched to the whole split's number of steps (:func:`fold_schedule`). Fold
    ``k`` trains both configs on seed ``seed + k``: paired within a fold, a fresh seed from one
    fold to the next, so the per-fold differences vary with the seed as a gain on test does
    (on one seed for all folds, a gain that holds for that seed only looks certain: CE + CC-Loss
    on the image folder gained on every fold of seed 3 and not on test).

    A run far below its arm's other folds (:func:`~chanloss.tuning.stats.stuck_flags`) is
    *stuck*: its fold pair is rerun once on seed ``seed + 1000 + k`` (both arms, still
    paired) and the reruns replace the pair in the test. Returns the per-fold scores used
    (``tuned``, ``ce``), the first scores (``first``), ``stuck`` (every stuck run, reruns
    included), ``runs`` (``2 * folds``), ``reruns`` (the folds rerun) and ``gain``
    (:func:`~chanloss.tuning.stats.paired_fold_test` of ``tuned - base``, floored by one
    validation image (of ``train_size / folds``, counted when not given) and ``noise``);
    ``gain_first`` without the reruns. ``after_s``: the seconds of the runs after these (the
    ETA in the log lines). Run directories
    ``out_dir/<name>/fold<k>`` (reruns ``fold<k>-rerun``)."""
    arms = dict(zip(names, (tuned, base), strict=True))
    folding = _Folding(arms, folds, out_dir, jobs=jobs, log=log, after_s=after_s)
    size = train_size or _train_size(tuned)
    n_val = size // folds
    first = folding.run(list(range(folds)), 0, "")
    scores = {n: [r.score for r in first[n]] for n in names}
    seeds = {n: [r.seed for r in first[n]] for n in names}
    stuck = _stuck_records(scores, seeds, n_val=n_val)
    used = {n: list(v) for n, v in scores.items()}
    pairs = sorted({r["fold"] for r in stuck})
    for record in stuck:
        if log is not None:
            log(f"stuck: {stuck_text(record)}; its fold pair is rerun on a fresh seed")
    if pairs:
        stuck += folding.rerun(pairs, used, seeds, n_val)
    resolution = folds / size
    gain = paired_fold_test(used[names[0]], used[names[1]], noise=noise, resolution=resolution)
    out = {"tuned": used[names[0]], "ce": used[names[1]], "gain": gain, "stuck": stuck,
           "runs": 2 * folds, "reruns": pairs, "resolution": resolution,
           "curves": {n: [r.curve for r in first[n]] for n in names}}  # fmt: skip
    if pairs:
        out["first"] = {"tuned": scores[names[0]], "ce": scores[names[1]]}
        out["gain_first"] = paired_fold_test(scores[names[0]], scores[names[1]], noise=noise,
                                             resolution=resolution)  # fmt: skip
    return out


@dataclass
class _Folding:
    """The fold runs of :func:`cross_validate`: each arm (name: raw config with its seed) on
    fold ``k`` with seed ``seed + offset + k``, into ``out_dir/<name>/fold<k><suffix>``."""

    arms: dict[str, dict[str, Any]]
    folds: int
    out_dir: Path
    jobs: int
    log: Any
    after_s: float

    def run(self, fold_ids: list[int], offset: int, suffix: str) -> dict[str, list[RunOutcome]]:
        """The runs of both arms on ``fold_ids`` (paired: the same seed on a fold)."""
        names = list(self.arms)
        tasks, labels = [], []
        for k in fold_ids:
            for name in names:
                raw = self.arms[name]
                tasks.append(_fold_task(raw, self.folds, k, int(raw.get("seed", 0)) + offset + k,
                                        self.out_dir / name / f"fold{k}{suffix}"))  # fmt: skip
                labels.append(f"{name} fold {k}{suffix.replace('-', ' ')}")
        done = confirm_runs(tasks, jobs=self.jobs, log=self.log, labels=labels, read_test=False,
                            after_s=self.after_s)  # fmt: skip
        return {name: done[i :: len(names)] for i, name in enumerate(names)}

    def rerun(
        self,
        pairs: list[int],
        used: dict[str, list[float]],
        seeds: dict[str, list[int]],
        n_val: int,
    ) -> list[dict[str, Any]]:
        """The fold ``pairs`` rerun on fresh seeds: their scores and seeds replace the first
        runs' in ``used`` and ``seeds``; returns the reruns that got stuck again."""
        again = self.run(pairs, RERUN_SEED_OFFSET, "-rerun")
        for n in self.arms:
            for k, r in zip(pairs, again[n], strict=True):
                used[n][k] = r.score
        for n in self.arms:
            for k, r in zip(pairs, again[n], strict=True):
                seeds[n][k] = r.seed
        late = _stuck_records(used, seeds, rerun=True, n_val=n_val)
        late = [r for r in late if r["fold"] in pairs]
        for record in late:
            if self.log is not None:
                self.log(f"stuck again: {stuck_text(record)}")
        return late


def _train_size(raw: dict[str, Any]) -> int:
    """Images in the training split of ``raw`` (validation left in)."""
    from chanloss.config import load_config
    from chanloss.run.builders import build_data

    r = copy.deepcopy(raw)
    r["data"].update(val_fraction=0.0, folds=0)
    return max(1, len(build_data(load_config(raw=r)).train.labels))
