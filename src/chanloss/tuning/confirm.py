"""After the search: the winner chosen on fresh seeds, the confirmation against CE alone
(paired k-fold cross-validation, or seeds only), one look at the test split, the outputs."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from chanloss.atomic import write_json
from chanloss.training.config import ConfigError
from chanloss.tuning.common import params_text, write_text
from chanloss.tuning.output import (
    chance_line,
    confirmation_table,
    epoch_noise_line,
    pruned_early_line,
    rerun_drop_line,
    write_trials_csv,
)
from chanloss.tuning.stats import SCORE_EPOCHS, gain_over, paired_fold_test, pooled_seed_std
from chanloss.tuning.storage import STUDY_NAME
from chanloss.tuning.study import seed_groups
from chanloss.tuning.trials import confirm_runs

if TYPE_CHECKING:
    from chanloss.tuning.tuner import Tuner

__all__ = [
    "check_folds",
    "choose",
    "confirm_folds",
    "confirm_seeds",
    "cross_validate",
    "finish",
    "fold_schedule",
]


def check_folds(tuner: Tuner) -> None:
    """``--folds K`` needs K images of every class in the training split (one line, exit 2)."""
    if not tuner.folds:
        return
    from chanloss.training.builders import build_data
    from chanloss.training.config import load_config

    raw = copy.deepcopy(tuner.raw)
    raw["data"]["val_fraction"] = 0.0
    labels = build_data(load_config(raw=raw)).train.labels
    counts = labels.bincount()
    least = int(counts.argmin())
    if int(counts.min()) < tuner.folds:
        raise ConfigError(
            f"--folds {tuner.folds}: every class needs at least {tuner.folds} training images; "
            f"class {least} has {int(counts.min())}; use fewer --folds"
        )


def _settings(study: Any) -> list[dict[str, Any]]:
    """The complete settings (params) with their trials and scores, best mean score first."""
    from optuna.trial import TrialState

    by: dict[str, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        key = json.dumps(t.params, sort_keys=True)
        entry = by.setdefault(key, {"params": t.params, "trials": [], "scores": []})
        entry["trials"].append(t.number)
        entry["scores"].append(t.value)
    rows = [{**e, "search_score": sum(e["scores"]) / len(e["scores"])} for e in by.values()]
    return sorted(rows, key=lambda e: -e["search_score"])


def choose(tuner: Tuner, study: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The winner: the ``--top`` best settings re-run on one fresh seed (the same for all, so
    they compare on the same split and seed), chosen by that re-run's score; the search's best
    alone when ``--top 0``. Returns the winner and the re-run rows."""
    settings = _settings(study)
    top = settings[: tuner.top]
    if len(top) < 2:  # nothing to choose between
        winner = settings[0]
        return {**winner, "rerun_score": None, "trial": winner["trials"][0]}, []
    seed = tuner.rerun_seed
    tasks = [(tuner.trial_raw(s["params"], seed),
              tuner.out_dir / "rerun" / f"trial-{s['trials'][0]:04d}" / f"seed{seed}")
             for s in top]  # fmt: skip
    tuner.log(f"re-running the {len(top)} best settings on a fresh seed ({seed}) to choose")
    done = confirm_runs(tasks, jobs=tuner.jobs, log=tuner.log, read_test=False,
                        labels=[f"trial {s['trials'][0]}" for s in top])  # fmt: skip
    rows = [{**s, "trial": s["trials"][0], "rerun_score": r.score}
            for s, r in zip(top, done, strict=True)]  # fmt: skip
    winner = max(rows, key=lambda r: (r["rerun_score"], r["search_score"]))
    return winner, rows


def fold_schedule(raw: dict[str, Any], folds: int) -> dict[str, Any]:
    """``raw`` stretched for a run on ``folds - 1`` of ``folds`` folds: ``epochs``,
    ``schedule.warmup_epochs``, ``step_size`` and ``milestones`` times ``folds / (folds - 1)``
    (epochs rounded), so that the fold's run takes about as many optimiser steps, on the same
    learning-rate schedule, as the run on the whole training split that the test split judges.
    Without it a fold trains ``(K-1)/K`` of the steps, and a loss that only learns faster looks
    better on the folds than on test (docs/tuning.md, "How long")."""
    from chanloss.training.config import load_config

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


def cross_validate(
    tuned: dict[str, Any],
    base: dict[str, Any],
    folds: int,
    out_dir: Path,
    *,
    jobs: int = 1,
    log: Any = None,
    names: tuple[str, str] = ("tuned", "ce"),
) -> dict[str, Any]:
    """The paired k-fold comparison of two training configs (``raw`` dicts with their seeds):
    both trained on the same ``folds`` stratified folds of the training split (drawn with the
    configs' ``data.split_seed``, or their seed), each fold held out once as validation, with
    the schedule stretched to the whole split's number of steps (:func:`fold_schedule`). Fold
    ``k`` trains both configs on seed ``seed + k``: paired within a fold, a fresh seed from one
    fold to the next, so the per-fold differences vary with the seed as a gain on test does
    (on one seed for all folds, a gain that holds for that seed only looks certain: CE + CC-Loss
    on the image folder gained on every fold of seed 3 and not on test). The per-fold scores
    and :func:`~chanloss.tuning.stats.paired_fold_test` of ``tuned - base``. Run directories
    ``out_dir/<name>/fold<k>``."""
    tasks, labels = [], []
    for fold in range(folds):
        for name, raw in zip(names, (tuned, base), strict=True):
            r = fold_schedule(raw, folds)
            seed = int(r.get("seed", 0))
            if r["data"].get("split_seed") is None:  # the folds must not move with the seed
                r["data"]["split_seed"] = seed
            r["data"].update(val_fraction=0.0, folds=folds, fold=fold)
            r["seed"] = seed + fold
            tasks.append((r, out_dir / name / f"fold{fold}"))
            labels.append(f"{name} fold {fold}")
    done = confirm_runs(tasks, jobs=jobs, log=log, labels=labels, read_test=False)
    a = [r.score for r in done[0::2]]
    b = [r.score for r in done[1::2]]
    return {"tuned": a, "ce": b, "gain": paired_fold_test(a, b),
            "curves": {names[0]: [r.curve for r in done[0::2]],
                       names[1]: [r.curve for r in done[1::2]]}}  # fmt: skip


def confirm_folds(tuner: Tuner, winner: dict[str, Any]) -> dict[str, Any]:
    """Paired, stratified k-fold confirmation on the whole training split: the winner and CE
    alone on the same K folds with the same seeds (``confirm_seed + k`` on fold ``k``), then
    both trained on the full training split (seed ``confirm_seed``) and the test split read
    once each."""
    k, seed = tuner.folds, tuner.confirm_seed
    name = f"trial-{winner['trial']:04d}"
    tuned, ce = tuner.trial_raw(winner["params"], seed), {**tuner.ce_raw(), "seed": seed}
    tuner.log(f"confirming trial {winner['trial']} against CE alone on {k} folds (fold k on "
              f"seed {seed} + k): {2 * k} runs, then both once on the full training split")  # fmt: skip
    val = cross_validate(tuned, ce, k, tuner.out_dir / "confirm", jobs=tuner.jobs,
                         log=tuner.log, names=(name, "ce"))  # fmt: skip
    val.pop("curves")
    finals = []
    for label, raw in ((name, tuned), ("ce", ce)):
        r = copy.deepcopy(raw)
        r["data"].update(val_fraction=0.0, folds=0)
        finals.append((r, tuner.out_dir / "final" / label))
    final = confirm_runs(finals, jobs=tuner.jobs, log=tuner.log, labels=["tuned full", "ce full"])  # fmt: skip
    return {
        "mode": "folds",
        "folds": k,
        "seed": seed,
        "trial": winner["trial"],
        "val": val,
        "test": {
            "tuned": [final[0].test_acc],
            "ce": [final[1].test_acc],
            "gain": gain_over([final[0].test_acc], [final[1].test_acc]),
        },
    }


def confirm_seeds(tuner: Tuner, winner: dict[str, Any]) -> dict[str, Any]:
    """The seed-only confirmation (``--folds 0``): winner and CE on ``--confirm-seeds`` fresh
    seeds on the search's validation split (Welch), test read once per run."""
    seeds = [tuner.confirm_seed + i for i in range(tuner.confirm_seeds)]
    tasks, labels = [], []
    for seed in seeds:
        for label, raw in (("tuned", tuner.trial_raw(winner["params"], seed)),
                           ("ce", {**tuner.ce_raw(), "seed": seed})):  # fmt: skip
            name = f"trial-{winner['trial']:04d}" if label == "tuned" else "ce"
            tasks.append((raw, tuner.out_dir / "confirm" / name / f"seed{seed}"))
            labels.append(label)
    tuner.log(f"confirming trial {winner['trial']} against CE alone over {len(seeds)} seed(s) "
              f"({', '.join(map(str, seeds))}): {len(tasks)} runs")  # fmt: skip
    done = confirm_runs(tasks, jobs=tuner.jobs, log=tuner.log, labels=labels)
    out: dict[str, Any] = {"mode": "seeds", "seeds": seeds, "trial": winner["trial"]}
    for split, get in (("val", lambda r: r.score), ("test", lambda r: r.test_acc)):
        a = [get(r) for lab, r in zip(labels, done, strict=True) if lab == "tuned"]
        b = [get(r) for lab, r in zip(labels, done, strict=True) if lab == "ce"]
        out[split] = {"tuned": a, "ce": b, "gain": gain_over(a, b)}
    return out


def write_best(tuner: Tuner, winner: dict[str, Any]) -> Path:
    raw = tuner.trial_raw(winner["params"])
    rerun = winner.get("rerun_score")
    header = (
        f"# Chosen by chanloss tune (trial {winner['trial']}, validation score "
        f"{100 * winner['search_score']:.2f}%"
        + (f", {100 * rerun:.2f}% on a fresh seed" if rerun is not None else "")
        + f", {tuner.config.epochs} epochs"
        + (f", from {tuner.config_path}" if tuner.config_path else "")
        + ").\n# "
        + params_text(winner["params"])
        + "\n# Train it with: chanloss train -c best.yaml\n"
    )
    path = tuner.out_dir / "best.yaml"
    write_text(path, header + yaml.safe_dump(raw, sort_keys=False))
    return path


def _pruned_early(tuner: Tuner, study: Any) -> tuple[int, int]:
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    early = sum(
        t.state == TrialState.PRUNED and t.user_attrs.get("epochs", 0) < tuner.config.epochs / 2
        for t in finished
    )
    return early, len(finished)


def finish(tuner: Tuner, study: Any, start: float) -> dict[str, Any]:
    """Everything after the search; returns what ``tune.json`` holds."""
    write_trials_csv(study, tuner.out_dir / "trials.csv", tuner.dims)
    counts = tuner.counts(study)
    if not counts["COMPLETE"]:
        raise ConfigError(
            f"no trial finished ({counts['PRUNED']} pruned, {counts['FAIL']} failed); "
            "give more --trials or --timeout, or check the ranges in search:"
        )
    early, finished = _pruned_early(tuner, study)
    if 2 * early > finished:
        tuner.note(pruned_early_line(early, finished, tuner.pruner))
    settings = _settings(study)
    noise, dof = pooled_seed_std(list(seed_groups(study).values()))
    chance = 1.0 / study.user_attrs.get("num_classes", 1)
    learned = settings[0]["search_score"] > chance + max(2 * (noise if dof else 0), 0.02)
    summary: dict[str, Any] = {
        "study": STUDY_NAME,
        "storage": tuner.shown_spec,
        "config": tuner.config_path,
        "trials_target": tuner.trials,
        "timeout_s": tuner.timeout_s,
        "counts": counts,
        "score": f"mean validation accuracy of the last {SCORE_EPOCHS} evaluated epochs",
        "chance": chance,
        "learned": learned,
        "space": [d.describe() for d in tuner.dims],
        "notes": tuner.notes,
    }
    best = confirmation = None
    reruns: list[dict[str, Any]] = []
    if not learned:
        tuner.note(chance_line(settings[0]["search_score"], chance))
    else:
        winner, reruns = choose(tuner, study)
        # the re-runs are not pooled into the noise: their search scores are the maxima of many
        # noisy trials, so (search, re-run) pairs differ by more than seeds alone make them
        best_path = write_best(tuner, winner)
        best = {"trial": winner["trial"], "val_acc": winner["search_score"],
                "rerun_val_acc": winner["rerun_score"], "params": winner["params"]}  # fmt: skip
        tuner.log(f"best: trial {winner['trial']}, val {100 * winner['search_score']:.2f}%"
                  + (f" ({100 * winner['rerun_score']:.2f}% on seed {tuner.rerun_seed})"
                     if winner["rerun_score"] is not None else "")
                  + f": {params_text(winner['params'])}; wrote {best_path}")  # fmt: skip
        if line := rerun_drop_line(winner, noise if dof else None):
            tuner.note(line)
        if tuner.folds:
            confirmation = confirm_folds(tuner, winner)
        elif tuner.confirm_seeds:
            confirmation = confirm_seeds(tuner, winner)
    from optuna.trial import TrialState

    from chanloss.tuning.pruners import seed_noise_by_epoch

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    summary["noise"] = {"std": noise if dof else None, "dof": dof,
                        "by_epoch": {str(k): v for k, v in seed_noise_by_epoch(complete).items()}}  # fmt: skip
    if line := epoch_noise_line(summary["noise"]):
        tuner.log(line)
    summary.update(best=best, reruns=[{k: r[k] for k in ("trial", "params", "search_score",
                                                          "rerun_score")} for r in reruns],
                   confirmation=confirmation, wall_s=round(time.time() - start, 1))  # fmt: skip
    write_json(tuner.out_dir / "tune.json", summary, default=str)
    from chanloss.tuning.report import write_report

    write_report(study, tuner.dims, summary, tuner.out_dir)
    if confirmation is not None:
        tuner.log("\n" + confirmation_table(confirmation, summary["noise"]))
    tail = f"; train the best with: chanloss train -c {tuner.out_dir / 'best.yaml'}" if best else ""
    tuner.log(f"\nreport in {tuner.out_dir / 'report.html'}{tail}")
    return summary
