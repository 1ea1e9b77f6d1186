"""After the search: the winner chosen on fresh seeds, the confirmation against CE alone
(paired k-fold cross-validation, or seeds only), one look at the test split, the outputs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chanloss.config import ConfigError
from chanloss.tuning.output import stuck_text
from chanloss.tuning.stats import gain_over, paired_fold_test, stuck_flags
from chanloss.tuning.trials import confirm_runs

if TYPE_CHECKING:
    from chanloss.tuning.tuner import Tuner

__all__ = [
    "check_folds",
    "choose",
    "confirm_folds",
    "confirm_seeds",
    "cross_validate",
    "fold_schedule",
]


def check_folds(tuner: Tuner) -> None:
    """``--folds K`` needs K images of every class in the training split (one line, exit 2)."""
    if not tuner.folds:
        return
    from chanloss.config import load_config
    from chanloss.run.builders import build_data

    raw = copy.deepcopy(tuner.raw)
    raw["data"]["val_fraction"] = 0.0
    labels = build_data(load_config(raw=raw)).train.labels
    tuner.train_size = len(labels)
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
                        after_s=tuner.after.get("choose", 0.0),
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
    seed = {n: int(raw.get("seed", 0)) for n, raw in zip(names, (tuned, base), strict=True)}
    arms = dict(zip(names, (tuned, base), strict=True))

    def run(fold_ids: list[int], offset: int, suffix: str) -> dict[str, list[Any]]:
        tasks, labels = [], []
        for k in fold_ids:
            for name in names:
                tasks.append(_fold_task(arms[name], folds, k, seed[name] + offset + k,
                                        out_dir / name / f"fold{k}{suffix}"))  # fmt: skip
                labels.append(f"{name} fold {k}{suffix.replace('-', ' ')}")
        done = confirm_runs(tasks, jobs=jobs, log=log, labels=labels, read_test=False,
                            after_s=after_s)  # fmt: skip
        return {name: done[i :: len(names)] for i, name in enumerate(names)}

    size = train_size or _train_size(tuned)
    n_val = size // folds
    first = run(list(range(folds)), 0, "")
    scores = {n: [r.score for r in first[n]] for n in names}
    seeds = {n: [r.seed for r in first[n]] for n in names}
    stuck = _stuck_records(scores, seeds, n_val=n_val)
    used = {n: list(v) for n, v in scores.items()}
    pairs = sorted({r["fold"] for r in stuck})
    for record in stuck:
        if log is not None:
            log(f"stuck: {stuck_text(record)}; its fold pair is rerun on a fresh seed")
    if pairs:
        again = run(pairs, RERUN_SEED_OFFSET, "-rerun")
        for n in names:
            for k, r in zip(pairs, again[n], strict=True):
                used[n][k] = r.score
        for n in names:
            for k, r in zip(pairs, again[n], strict=True):
                seeds[n][k] = r.seed
        late = _stuck_records(used, seeds, rerun=True, n_val=n_val)
        late = [r for r in late if r["fold"] in pairs]
        for record in late:
            if log is not None:
                log(f"stuck again: {stuck_text(record)}")
        stuck += late
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


def _train_size(raw: dict[str, Any]) -> int:
    """Images in the training split of ``raw`` (validation left in)."""
    from chanloss.config import load_config
    from chanloss.run.builders import build_data

    r = copy.deepcopy(raw)
    r["data"].update(val_fraction=0.0, folds=0)
    return max(1, len(build_data(load_config(raw=r)).train.labels))


def confirm_folds(tuner: Tuner, winner: dict[str, Any], noise: float | None) -> dict[str, Any]:
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
                         log=tuner.log, names=(name, "ce"), noise=noise,
                         train_size=tuner.train_size,
                         after_s=tuner.after.get("folds", 0.0))  # fmt: skip
    val.pop("curves")
    for record in val["stuck"]:
        record["arm"] = "tuned" if record["arm"] == name else record["arm"]
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
        "stuck": val.pop("stuck"),
        "runs": val.pop("runs"),
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
    done = confirm_runs(tasks, jobs=tuner.jobs, log=tuner.log, labels=labels,
                        after_s=tuner.after.get("folds", 0.0))  # fmt: skip
    out: dict[str, Any] = {"mode": "seeds", "seeds": seeds, "trial": winner["trial"],
                           "runs": len(tasks)}  # fmt: skip
    for split, get in (("val", lambda r: r.score), ("test", lambda r: r.test_acc)):
        a = [get(r) for lab, r in zip(labels, done, strict=True) if lab == "tuned"]
        b = [get(r) for lab, r in zip(labels, done, strict=True) if lab == "ce"]
        out[split] = {"tuned": a, "ce": b, "gain": gain_over(a, b)}
    # a run far below the same arm's other seeds (no rerun: every seed is already a fresh one)
    scores = {"tuned": out["val"]["tuned"], "ce": out["val"]["ce"]}
    out["stuck"] = [
        {**r, "fold": None} for r in _stuck_records(scores, {"tuned": seeds, "ce": seeds})
    ]
    return out
