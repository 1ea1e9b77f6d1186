"""The text and CSV outputs of ``chanloss tune``: the confirmation table, the advice, trials.csv."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from chanloss.config.search import Dimension
from chanloss.core.atomic import write_text
from chanloss.core.text import mean_std, pct
from chanloss.tuning.stats import noise_text

__all__ = [
    "advice",
    "chance_line",
    "confirmation_table",
    "epoch_noise_line",
    "gain_text",
    "noise_line",
    "power_line",
    "pruned_early_line",
    "rerun_drop_line",
    "search_stuck_text",
    "stuck_lines",
    "stuck_text",
    "trial_rows",
    "write_trials_csv",
]


def gain_text(g: dict[str, Any]) -> str:
    """A gain and its verdict: paired k-fold (``threshold``) or Welch (``se``)."""
    if math.isnan(g["diff"]):
        return "-"
    text = f"{100 * g['diff']:+.2f} pts"
    if g["beyond"] is None:
        return text + f" ({g.get('reason', 'one run each')}: information, not a verdict)"
    verdict = "beyond noise" if g["beyond"] else "within noise"
    if "threshold" in g:
        floor = {"seed noise": ", floored by the seed noise",
                 "one image": ", floored by one validation image"}.get(g.get("floor") or "", "")  # fmt: skip
        return (f"{text}, beyond noise from ±{100 * g['threshold']:.2f} (paired, {g['folds']} "
                f"folds, p = {g['p']:.2f}{floor}): {verdict}")  # fmt: skip
    return f"{text}, 2 SE = {200 * g['se']:.2f}: {verdict}"


def power_line(conf: dict[str, Any]) -> str:
    """What the confirmation could have seen (k-fold mode)."""
    g = conf["val"]["gain"]
    if conf.get("mode") != "folds" or g["beyond"] is None:
        return ""
    return (
        f"power: with these {g['folds']} folds a true gain of {100 * g['detectable']:.2f} points "
        f"or more is found beyond noise 8 times in 10; a smaller real gain may be missed"
    )


def corrected_line(conf: dict[str, Any]) -> str:
    """The wider question beside the verdict (k-fold mode): would the gain hold on another
    training set of this size (the Nadeau-Bengio corrected test)?"""
    g = conf["val"]["gain"]
    if conf.get("mode") != "folds" or g.get("beyond_corrected") is None:
        return ""
    holds = "holds" if g["beyond_corrected"] else "is not shown"
    return (
        f"other training sets: with the Nadeau-Bengio correction for the folds' overlapping "
        f"training sets, p = {g['p_corrected']:.2f}: the difference {holds} beyond noise for "
        "another training set drawn like this one (information; the verdict is about this data)"
    )


def noise_line(noise: dict[str, Any] | None) -> str:
    if not noise or noise.get("std") is None:
        return "noise: not measured (the config as written finished on fewer than two seeds)"
    dof = noise.get("dof")
    left_out = noise.get("stuck_left_out") or []
    return (
        "noise: on this split, the seed standard deviation of a score is "
        + (noise_text(noise["std"], dof) if dof else f"{100 * noise['std']:.2f} points")
        + f"; differences below ±{200 * noise['std']:.2f} are noise"
        + (f" (stuck trials left out: {', '.join(map(str, left_out))})" if left_out else "")
    )


def epoch_noise_line(noise: dict[str, Any] | None) -> str:
    """The seed noise of the smoothed validation curve by epoch (the noise pruner's margin is
    twice it), written where it changes; empty when not measured."""
    by_epoch = (noise or {}).get("by_epoch") or {}
    if not by_epoch:
        return ""
    steps, parts, previous = sorted(by_epoch, key=int), [], None
    for step in steps:
        value = round(100 * by_epoch[step], 1)
        if value != previous:
            parts.append(f"{int(step)}: {value:.1f}")
            previous = value
    return (
        "noise by epoch (the seed standard deviation of the smoothed curve in points, from that "
        "epoch on; the noise pruner stops a trial only when it lies below the median by more "
        f"than twice this): epoch {', '.join(parts)}"
    )


def confirmation_table(conf: dict[str, Any], noise: dict[str, Any] | None = None) -> str:
    """The final table: CE alone vs the tuned setting, validation (k folds or seeds) and test,
    then the noise, the power line and the advice."""
    if conf.get("mode") == "folds":
        head = (f"validation ({conf['folds']} folds, paired)", "test (full training split, once)")
    else:
        n = len(conf["seeds"])
        head = (f"validation ({n} seed{'s' if n > 1 else ''})", "test (read once)")
    rows = [
        ("", *head),
        ("CE alone", pct(*mean_std(conf["val"]["ce"])), pct(*mean_std(conf["test"]["ce"]))),
        (
            f"tuned (trial {conf['trial']})",
            pct(*mean_std(conf["val"]["tuned"])),
            pct(*mean_std(conf["test"]["tuned"])),
        ),
        ("gain over CE", gain_text(conf["val"]["gain"]), gain_text(conf["test"]["gain"])),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    table = "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
    lines = (noise_line(noise) if noise else "", power_line(conf), corrected_line(conf))
    extra = [line for line in lines if line] + stuck_lines(conf)
    return "\n".join([table, *extra, "verdict: " + advice(conf)])


def stuck_text(record: dict[str, Any]) -> str:
    """``fold 4, tuned arm, seed 7: stuck at 57.0 % while the other folds reached 91.0-95.0 %``."""
    lo, hi = record["others"]
    what = "rerun" if record.get("rerun") else "run"
    where, others = (
        (f"fold {record['fold']}, ", "folds") if record["fold"] is not None else ("", "seeds")
    )
    return (f"{where}{record['arm']} arm, seed {record['seed']} ({what}): stuck at "
            f"{100 * record['score']:.1f} % while the other {others} reached "
            f"{100 * lo:.1f}-{100 * hi:.1f} %")  # fmt: skip


def search_stuck_text(record: dict[str, Any]) -> str:
    """``trial 1, seed 1: stuck at 57.0 % while the same setting on other seeds reached ...``."""
    lo, hi = record["others"]
    return (f"trial {record['trial']}, seed {record['seed']}: stuck at {100 * record['score']:.1f} % "
            f"while the same setting on other seeds reached {100 * lo:.1f}-{100 * hi:.1f} %")  # fmt: skip


def stuck_lines(conf: dict[str, Any]) -> list[str]:
    """The stuck confirmation runs, and the gain without the reruns that replaced them."""
    lines = [f"stuck: {stuck_text(r)}" for r in conf.get("stuck", [])]
    first = conf["val"].get("gain_first")
    if first is not None:
        folds = ", ".join(map(str, conf["val"]["reruns"]))
        lines.append(f"reruns: fold(s) {folds} rerun on a fresh seed; the verdict uses the reruns; "
                     f"with the first runs instead: {gain_text(first)}")  # fmt: skip
    return lines


def advice(conf: dict[str, Any]) -> str:
    """What to do, decided on the validation runs only (the test row is information): the
    verdict's text (:func:`~chanloss.tuning.recommend.decide`; without a stored verdict,
    decided here without a noise estimate or stuck runs)."""
    from chanloss.tuning.recommend import decide

    verdict = conf.get("verdict") or decide(conf["val"]["gain"])
    return verdict["text"]


def chance_line(best: float, chance: float) -> str:
    """The search learned nothing: no "best" is worth presenting."""
    return (
        f"no trial learned more than chance: the best validation score is {100 * best:.2f}% "
        f"and chance is {100 * chance:.2f}%; no best setting is chosen and no importances are "
        "computed. Check the data (labels, image size), optim.lr and epochs with chanloss train"
    )


def rerun_drop_line(winner: dict[str, Any], noise: float | None) -> str:
    """The winner's score on a fresh seed fell below its search score by more than twice the
    seed noise: the search's ranking owed much to its seeds (empty otherwise)."""
    search, rerun = winner.get("search_score"), winner.get("rerun_score")
    if rerun is None or noise is None or not math.isfinite(noise):
        return ""
    drop = search - rerun
    if drop <= 2 * noise:
        return ""
    return (
        f"re-run: the chosen setting scored {100 * search:.2f}% in the search and "
        f"{100 * rerun:.2f}% on a fresh seed, {100 * drop:.2f} points lower (noise ±"
        f"{200 * noise:.2f}): its search score owed much to its seed, so expect the "
        "confirmation to find less; a larger validation split (data.val_fraction) or more "
        "epochs make the search's ranking more reliable"
    )


def pruned_early_line(early: int, finished: int, pruner: str) -> str:
    """More than half of the finished trials were pruned before half of the epochs."""
    return (
        f"pruning: {early} of {finished} finished trials were pruned before half of the epochs, "
        f"on early and noisy values (pruner {pruner}); use --pruner noise (it waits for half of "
        "the epochs and the measured noise) or --pruner none, or train more epochs"
    )


def trial_rows(
    study: Any, dims: list[Dimension], stuck: set[int] | frozenset[int] = frozenset()
) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, stuck (``yes`` for the trials in ``stuck``),
    epochs, time, params, run directory."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {
            "number": t.number,
            "state": t.user_attrs.get("outcome", t.state.name.lower()),
            "seed": t.user_attrs.get("seed", ""),
            "val_acc": t.value if t.state.name == "COMPLETE" else "",
            "stuck": "yes" if t.number in stuck else "",
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


def write_trials_csv(
    study: Any, path: Path, dims: list[Dimension], stuck: set[int] | frozenset[int] = frozenset()
) -> None:
    """``trials.csv``: :func:`trial_rows` as CSV."""
    import io

    rows = trial_rows(study, dims, stuck)
    fields = ["number", "state", "seed", "val_acc", "stuck", "last_val_acc", "epochs", "time_s"]
    fields += [d.name for d in dims] + ["origin", "run_dir", "error"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())
