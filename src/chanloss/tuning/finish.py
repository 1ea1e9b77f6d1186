"""What ``chanloss tune`` writes and says after its search, from plain values: ``best.yaml``
(its header says what the confirmation showed), ``ce.yaml`` (CE alone, the config to use
without a shown gain), the winner's line, the last line, and what ``tune.json`` holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from chanloss.core.atomic import write_text
from chanloss.tuning.common import SearchFacts, params_text
from chanloss.tuning.stats import SCORE_EPOCHS
from chanloss.tuning.storage import STUDY_NAME

__all__ = [
    "best_line",
    "best_record",
    "last_line",
    "learned",
    "noise_summary",
    "tune_summary",
    "write_best",
    "write_ce",
]


def write_best(
    out_dir: Path,
    raw: dict[str, Any],
    winner: dict[str, Any],
    verdict: dict[str, Any] | None,
    *,
    epochs: int,
    config_path: str | None = None,
) -> Path:
    """``out_dir/best.yaml``: the winner's config (``raw``); its header says whether the
    confirmation showed it to help (``verdict``; ``None``: not confirmed, yet or at all),
    the trials' ``epochs`` and the config it came from."""
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
        + f", {epochs} epochs"
        + (f", from {config_path}" if config_path else "")
        + ").\n# "
        + params_text(winner["params"])
        + "\n"
        + status
        + train
    )
    path = out_dir / "best.yaml"
    write_text(path, header + yaml.safe_dump(raw, sort_keys=False))
    return path


def write_ce(out_dir: Path, raw: dict[str, Any]) -> Path:
    """``out_dir/ce.yaml``: the config as written with cross-entropy alone (``raw``: the
    confirmation's baseline)."""
    path = out_dir / "ce.yaml"
    header = ("# CE alone: the config as written with cross-entropy only, the baseline chanloss "
              "tune confirmed against.\n# Train it with: chanloss train -c ce.yaml\n")  # fmt: skip
    write_text(path, header + yaml.safe_dump(raw, sort_keys=False))
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


def learned(facts: SearchFacts) -> bool:
    """Whether the search's best setting learned more than chance (by twice the seed noise,
    and at least 2 points)."""
    chance = 1.0 / facts.num_classes
    return facts.settings[0]["search_score"] > chance + max(2 * (facts.noise or 0), 0.02)


def best_record(winner: dict[str, Any]) -> dict[str, Any]:
    """What tune.json holds of the winner."""
    return {"trial": winner["trial"], "val_acc": winner["search_score"],
            "rerun_val_acc": winner["rerun_score"], "params": winner["params"]}  # fmt: skip


def best_line(winner: dict[str, Any], rerun_seed: int, path: Path) -> str:
    """``best: trial 2, val 40.39% (44.21% on seed 7): ...; wrote OUT/best.yaml``."""
    return (f"best: trial {winner['trial']}, val {100 * winner['search_score']:.2f}%"
            + (f" ({100 * winner['rerun_score']:.2f}% on seed {rerun_seed})"
               if winner["rerun_score"] is not None else "")
            + f": {params_text(winner['params'])}; wrote {path}")  # fmt: skip


def noise_summary(facts: SearchFacts) -> dict[str, Any]:
    """What tune.json holds of the seed noise."""
    dof = facts.dof
    return {"std": facts.noise, "dof": dof, "rough": dof == 1,
            "stuck_left_out": [r["trial"] for r in facts.stuck],
            "by_epoch": {str(k): v for k, v in facts.by_epoch.items()}}  # fmt: skip


def tune_summary(
    facts: SearchFacts,
    outcome: dict[str, Any],
    *,
    shown_spec: str,
    config_path: str | None,
    trials: int | None,
    timeout_s: float | None,
    space: list[str],
    notes: list[str],
    wall_s: float,
    search_s: float | None,
) -> dict[str, Any]:
    """What ``tune.json`` holds: the search (``facts``, the storage, the target, the searched
    ``space``, the ``notes`` said), the ``outcome`` after it (best, reruns, confirmation,
    verdict) and the times."""
    confirmation = outcome["confirmation"]
    summary: dict[str, Any] = {
        "study": STUDY_NAME,
        "storage": shown_spec,
        "config": config_path,
        "trials_target": trials,
        "timeout_s": timeout_s,
        "counts": facts.counts,
        "score": f"mean validation accuracy of the last {SCORE_EPOCHS} evaluated epochs",
        "chance": 1.0 / facts.num_classes,
        "learned": learned(facts),
        "space": space,
        "notes": notes,
        "noise": noise_summary(facts),
        "stuck": {
            "search": facts.stuck,
            "confirmation": confirmation["stuck"] if confirmation else [],
        },
    }
    summary.update(outcome, wall_s=round(wall_s, 1),
                   search_s=round(search_s, 1) if search_s is not None else None)  # fmt: skip
    return summary
