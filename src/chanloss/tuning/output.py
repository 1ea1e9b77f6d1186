"""The text and CSV outputs of ``chanloss tune``: the confirmation table, the advice, trials.csv."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from chanloss.training.search import Dimension
from chanloss.tuning.common import mean_std, write_text

__all__ = ["advice", "confirmation_table", "gain_text", "pct", "trial_rows", "write_trials_csv"]


def pct(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    if math.isnan(std):
        return f"{100 * mean:.2f} %"
    return f"{100 * mean:.2f} ± {100 * std:.2f} %"


def gain_text(g: dict[str, Any]) -> str:
    if math.isnan(g["diff"]):
        return "-"
    text = f"{100 * g['diff']:+.2f} pts"
    if g["beyond"] is None:
        return text + " (one seed: noise unknown)"
    verdict = "beyond noise" if g["beyond"] else "within noise"
    return f"{text}, 2 SE = {200 * g['se']:.2f}: {verdict}"


def confirmation_table(conf: dict[str, Any]) -> str:
    """The final table: CE alone vs the tuned setting, validation and test, mean ± std."""
    n = len(conf["seeds"])
    rows = [
        ("", f"validation ({n} seed{'s' if n > 1 else ''})", "test (read once)"),
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
    return table + "\n" + advice(conf)


def advice(conf: dict[str, Any]) -> str:
    """What to do, decided on the validation runs only (the test row is information)."""
    g = conf["val"]["gain"]
    if g["beyond"] is None:
        return "one seed: no noise estimate; rerun with --confirm-seeds 3 before trusting the gain"
    if g["beyond"] and g["diff"] > 0:
        return "the tuned setting beats CE alone on validation beyond noise: use best.yaml"
    if g["beyond"]:
        return "CE alone is better on validation beyond noise: keep CE (do not use best.yaml)"
    return (
        "no difference beyond noise on validation: the tuned losses are not shown to help; "
        "CE alone is as good"
    )


def trial_rows(study: Any, dims: list[Dimension]) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, epochs, time, params, run directory."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {
            "number": t.number,
            "state": t.user_attrs.get("outcome", t.state.name.lower()),
            "val_acc": t.value if t.state.name == "COMPLETE" else "",
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


def write_trials_csv(study: Any, path: Path, dims: list[Dimension]) -> None:
    """``trials.csv``: :func:`trial_rows` as CSV."""
    import io

    rows = trial_rows(study, dims)
    fields = ["number", "state", "val_acc", "last_val_acc", "epochs", "time_s"]
    fields += [d.name for d in dims] + ["origin", "run_dir", "error"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())
