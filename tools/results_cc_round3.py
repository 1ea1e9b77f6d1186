"""The results-page section of CC-Loss's two readings (``benchmarks/bench_cc_round3.py``) and its
gradient share at initialisation (``benchmarks/bench_cc_grad_share.py``); rendered by
``tools/results_page.py``."""

from __future__ import annotations

from typing import Any

from results_format import pct

ARM_NAMES = {
    "ce": "CE",
    "ce+se": "CE + SE gate (control)",
    "cc-gate": "CE + CC (gate)",
    "cc-branch": "CE + CC (branch)",
}
DATASET_NAMES = {"folder": "56 px image folder"}


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.2g}"


def _arms_table(datasets: dict[str, Any]) -> list[str]:
    names = list(datasets)
    head = "| arm | " + " | ".join(DATASET_NAMES.get(d, d) for d in names) + " |"
    lines = [head, "|---|" + "---|" * len(names)]
    for arm, label in ARM_NAMES.items():
        cells = []
        for d in names:
            row = datasets[d]["arms"].get(arm)
            if row is None:
                cells.append("–")
                continue
            w = row.get("effective_weight")
            weight = f" (w {w:g})" if w is not None else ""
            cells.append(f"{pct(row['test_mean'], row['test_std'])}{weight}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _share_lines(datasets: dict[str, Any]) -> list[str]:
    lines = [
        "| data set | reading | weight | share, first epoch | share, last epoch |",
        "|---|---|---|---|---|",
    ]
    for d, entry in datasets.items():
        for arm in ("cc-gate", "cc-branch"):
            row = entry["arms"].get(arm)
            if row is None:
                continue
            lines.append(
                f"| {DATASET_NAMES.get(d, d)} | {arm.removeprefix('cc-')} | "
                f"{row['effective_weight']:g} | {_share(row['share_first_epoch'])} | "
                f"{_share(row['share_last_epoch'])} |"
            )
    return lines


def _init_lines(init: dict[str, Any] | None) -> list[str]:
    if not init or not init.get("rows"):
        return []
    rows = init["rows"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    lines = [
        "",
        f"Gradient share at initialisation, weight {rows[0]['weight']:g} (the gate's default), median "
        f"over {init['batches']} batches x {init['seeds']} seeds "
        "(`benchmarks/bench_cc_grad_share.py`, `benchmarks/results/cc_grad_share.json`; linear "
        "in the weight):",
        "",
        "| reading | form | " + " | ".join(DATASET_NAMES.get(d, d) for d in datasets) + " |",
        "|---|---|" + "---|" * len(datasets),
    ]
    keys = list(dict.fromkeys((r["placement"], r["form"]) for r in rows))
    for placement, form in keys:
        cells = []
        for d in datasets:
            match = [
                r for r in rows if (r["dataset"], r["placement"], r["form"]) == (d, placement, form)
            ]
            cells.append(f"{match[0]['feature_map']:.2g}" if match else "–")
        lines.append(f"| {placement} | {form} | " + " | ".join(cells) + " |")
    return lines


def _wins(datasets: dict[str, Any], pair: str) -> list[str]:
    """The data sets whose verdict line for ``pair`` (``"cc-gate - ce"``) is a gain beyond
    seed noise."""
    return [
        DATASET_NAMES.get(d, d)
        for d, entry in datasets.items()
        for v in entry["verdicts"]
        if v.startswith(f"{pair}: +") and "beyond seed noise" in v
    ]


def _summary(datasets: dict[str, Any]) -> str:
    n = len(datasets)

    def count(pair: str) -> str:
        wins = _wins(datasets, pair)
        return f"{len(wins)} of {n}" + (f" ({', '.join(wins)})" if wins else "")

    return (
        f"**In short:** CE + CC (gate) beat CE beyond seed noise on {count('cc-gate - ce')} data "
        f"sets and the CE + SE-gate control on {count('cc-gate - ce+se')}; the control beat CE "
        f"on {count('ce+se - ce')}; CE + CC (branch) beat CE on {count('cc-branch - ce')}. Where "
        "a gap is within noise these runs cannot tell the arms apart."
    )


def cc_round3_section(data: dict[str, Any] | None, init: dict[str, Any] | None) -> list[str]:
    """Markdown lines: the four arms per data set, the verdicts, the gradient shares."""
    if not data or not data.get("datasets"):
        return []
    datasets = data["datasets"]
    lines = [
        "### CC-Loss: gate and branch readings against CE and the SE-gate control",
        "",
        f"Final test accuracy (%), mean ± sample std over {data['seeds']} seeds, from "
        "`benchmarks/bench_cc_round3.py` (`benchmarks/results/cc_round3.json`). Every run holds "
        "out a fifth of its training data for validation; CC-Loss's weight (w, in effect) "
        f"was chosen per data set and reading on validation from {data['weights_swept']} "
        "(seed 0; the test split is never used to choose). Ratio form. SHRUNK recipes (narrow "
        "ConvNets, 6 to 16 epochs, to fit about an hour of one CPU core), so the accuracies are "
        "below converged ones and the spread over seeds is large.",
        "",
        *_arms_table(datasets),
        "",
        "Verdicts (the project's rule: beyond seed noise when the gap of the means exceeds 2 "
        "standard errors of the difference):",
        "",
    ]
    for d, entry in datasets.items():
        for verdict in entry["verdicts"]:
            lines.append(f"- {DATASET_NAMES.get(d, d)}: {verdict}")
    lines += ["", _summary(datasets)]
    lines += [
        "",
        "Gradient share of CC-Loss on the feature map (its gradient norm over CE's, epoch "
        "means of `grad_share_every: 10`, mean over seeds):",
        "",
        *_share_lines(datasets),
        *_init_lines(init),
        "",
        "![gradient share](../benchmarks/results/cc_round3_grad_share.png)",
        "",
    ]
    return lines
