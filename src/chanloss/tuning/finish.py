"""Everything ``chanloss tune`` does after its search: choose the winner, confirm it against CE
alone (:mod:`chanloss.tuning.confirm`), decide (:mod:`chanloss.tuning.recommend`) and write
the outputs: ``best.yaml`` (its header says what the confirmation showed), ``ce.yaml`` (CE
alone, the config to use without a shown gain), ``trials.csv``, ``tune.json``, the report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from chanloss.config import ConfigError
from chanloss.core.atomic import write_json, write_text
from chanloss.tuning.common import params_text
from chanloss.tuning.confirm import _settings, choose, confirm_folds, confirm_seeds
from chanloss.tuning.output import (
    chance_line,
    confirmation_table,
    epoch_noise_line,
    pruned_early_line,
    rerun_drop_line,
    write_trials_csv,
)
from chanloss.tuning.recommend import decide
from chanloss.tuning.stats import SCORE_EPOCHS, pooled_seed_std, without_stuck
from chanloss.tuning.storage import STUDY_NAME
from chanloss.tuning.study import search_stuck, seed_groups

if TYPE_CHECKING:
    from chanloss.tuning.tuner import Tuner

__all__ = ["finish", "last_line", "write_best", "write_ce"]


def write_best(tuner: Tuner, winner: dict[str, Any], verdict: dict[str, Any] | None) -> Path:
    """``best.yaml``: the winner's config; its header says whether the confirmation showed it
    to help (``verdict``; ``None``: not confirmed, yet or at all)."""
    raw = tuner.trial_raw(winner["params"])
    rerun = winner.get("rerun_score")
    if verdict is None:
        status = "# Not confirmed against CE alone: the search's choice, not shown to help.\n"
        train = "# Train it with: chanloss train -c best.yaml\n"
    elif verdict["answer"] == "gain":
        status = "# Confirmed: beats CE alone on validation beyond noise (tune.json, verdict).\n"
        train = "# Train it with: chanloss train -c best.yaml\n"
    else:
        status = (f"# NOT shown to help: the confirmation's verdict is {verdict['answer']!r} "
                  "(tune.json); use ce.yaml (CE alone) instead.\n")  # fmt: skip
        train = "# To train it anyway: chanloss train -c best.yaml\n"
    header = (
        f"# Chosen by chanloss tune (trial {winner['trial']}, validation score "
        f"{100 * winner['search_score']:.2f}%"
        + (f", {100 * rerun:.2f}% on a fresh seed" if rerun is not None else "")
        + f", {tuner.config.epochs} epochs"
        + (f", from {tuner.config_path}" if tuner.config_path else "")
        + ").\n# "
        + params_text(winner["params"])
        + "\n"
        + status
        + train
    )
    path = tuner.out_dir / "best.yaml"
    write_text(path, header + yaml.safe_dump(raw, sort_keys=False))
    return path


def write_ce(tuner: Tuner) -> Path:
    """``ce.yaml``: the config as written with cross-entropy alone (the confirmation's
    baseline)."""
    path = tuner.out_dir / "ce.yaml"
    header = ("# CE alone: the config as written with cross-entropy only, the baseline chanloss "
              "tune confirmed against.\n# Train it with: chanloss train -c ce.yaml\n")  # fmt: skip
    write_text(path, header + yaml.safe_dump(tuner.ce_raw(), sort_keys=False))
    return path


def last_line(out_dir: Path, verdict: dict[str, Any] | None, chosen: bool) -> str:
    """The command's last line: the report, and the config to train (``best.yaml`` only when
    the confirmation showed a gain)."""
    report = f"report in {out_dir / 'report.html'}"
    if not chosen:
        return report
    if verdict is None:
        return (f"{report}; no confirmation against CE alone: the search's choice is "
                f"{out_dir / 'best.yaml'} (not shown to help), CE alone is "
                f"{out_dir / 'ce.yaml'}")  # fmt: skip
    if verdict["use"] == "best.yaml":
        return f"{report}; verdict gain: train the best with: chanloss train -c {out_dir / 'best.yaml'}"
    return (f"{report}; verdict {verdict['answer']}: best.yaml is not shown to help; train CE "
            f"alone with: chanloss train -c {out_dir / 'ce.yaml'}")  # fmt: skip


def _pruned_early(tuner: Tuner, study: Any) -> tuple[int, int]:
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    early = sum(
        t.state == TrialState.PRUNED and t.user_attrs.get("epochs", 0) < tuner.config.epochs / 2
        for t in finished
    )
    return early, len(finished)


def _confirm(tuner: Tuner, study: Any, noise: float | None) -> dict[str, Any]:
    """Choose, write best.yaml and ce.yaml, confirm, decide; what tune.json holds of it."""
    tuner.after = {stage: tuner.after_s(stage, study) for stage in ("choose", "folds", "final")}
    winner, reruns = choose(tuner, study)
    # the re-runs are not pooled into the noise: their search scores are the maxima of many
    # noisy trials, so (search, re-run) pairs differ by more than seeds alone make them
    best_path = write_best(tuner, winner, None)
    write_ce(tuner)
    best = {"trial": winner["trial"], "val_acc": winner["search_score"],
            "rerun_val_acc": winner["rerun_score"], "params": winner["params"]}  # fmt: skip
    tuner.log(f"best: trial {winner['trial']}, val {100 * winner['search_score']:.2f}%"
              + (f" ({100 * winner['rerun_score']:.2f}% on seed {tuner.rerun_seed})"
                 if winner["rerun_score"] is not None else "")
              + f": {params_text(winner['params'])}; wrote {best_path}")  # fmt: skip
    if line := rerun_drop_line(winner, noise):
        tuner.note(line)
    confirmation = verdict = None
    if tuner.folds:
        confirmation = confirm_folds(tuner, winner, noise)
    elif tuner.confirm_seeds:
        confirmation = confirm_seeds(tuner, winner)
    if confirmation is not None:
        verdict = decide(confirmation["val"]["gain"], noise=noise,
                         stuck=len(confirmation["stuck"]), runs=confirmation["runs"])  # fmt: skip
        confirmation["verdict"] = verdict
        write_best(tuner, winner, verdict)
    reruns = [{k: r[k] for k in ("trial", "params", "search_score", "rerun_score")} for r in reruns]
    return {"best": best, "reruns": reruns, "confirmation": confirmation, "verdict": verdict}


def finish(tuner: Tuner, study: Any, start: float) -> dict[str, Any]:
    """Everything after the search; returns what ``tune.json`` holds."""
    stuck = search_stuck(study)
    write_trials_csv(study, tuner.out_dir / "trials.csv", tuner.dims,
                     stuck={r["trial"] for r in stuck})  # fmt: skip
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
    noise, dof = pooled_seed_std(without_stuck(list(seed_groups(study).values())))
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
    outcome: dict[str, Any] = {"best": None, "reruns": [], "confirmation": None, "verdict": None}
    if not learned:
        tuner.note(chance_line(settings[0]["search_score"], chance))
    else:
        outcome = _confirm(tuner, study, noise if dof else None)
    from optuna.trial import TrialState

    from chanloss.tuning.pruners import seed_noise_by_epoch

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    summary["noise"] = {"std": noise if dof else None, "dof": dof, "rough": dof == 1,
                        "stuck_left_out": [r["trial"] for r in stuck],
                        "by_epoch": {str(k): v for k, v in seed_noise_by_epoch(complete).items()}}  # fmt: skip
    if line := epoch_noise_line(summary["noise"]):
        tuner.log(line)
    confirmation = outcome["confirmation"]
    summary["stuck"] = {"search": stuck,
                        "confirmation": confirmation["stuck"] if confirmation else []}  # fmt: skip
    search_s = round(tuner.search_s, 1) if tuner.search_s is not None else None
    summary.update(outcome, wall_s=round(time.time() - start, 1), search_s=search_s)
    write_json(tuner.out_dir / "tune.json", summary, default=str)
    from chanloss.tuning.report import write_report

    write_report(study, tuner.dims, summary, tuner.out_dir)
    if confirmation is not None:
        tuner.log("\n" + confirmation_table(confirmation, summary["noise"]))
    tuner.log("\n" + last_line(tuner.out_dir, outcome["verdict"], outcome["best"] is not None))
    return summary
