"""Rewrite the results block of ``docs/results.md`` from the files in ``benchmarks/results/``
(``make report``).

Only the text between ``<!-- results:start -->`` and ``<!-- results:end -->`` is replaced (the
markers are appended to the page when it has none). Sources:

- ``study_<dataset>.csv`` / ``.json`` (``benchmarks/study/run_study.py``): final test accuracy,
  mean +- sample std over seeds, per loss and data set; ``study_sweep-<dataset>.json``: the
  CC/MC values chosen on validation; ``study_*_curves.png``;
- ``train_step_<device>.json``: CE vs CE+CC vs CE+MC training-step times and ratios;
- ``losses_<device>.json``: forward+backward time and peak memory of every loss;
- ``scaling_<device>.json`` / ``.png``; ``cc_loss_cpu.json`` and ``mc_loss_cpu.json``;
- ``cc_round3.json`` / ``cc_grad_share.json``: CC-Loss's gate and branch readings against CE
  and the SE-gate control (``report_cc_round3.py``);
- ``tune_<dataset>.json`` (``benchmarks/bench_tune.py``): tune's verdict against the test
  split; ``tune_calibration.json`` (``benchmarks/bench_tune_calibration.py``): its calibration.

Files from ``--quick`` runs (``results/quick/`` or ``"quick": true``) are ignored. The block
names the machine and commit of every source and says plainly where CC-Loss or MC-Loss does
not beat cross-entropy.

    python benchmarks/report.py                 # rewrite docs/results.md
    python benchmarks/report.py --print         # print the block only
    python benchmarks/report.py --check         # exit 1 when docs/results.md is out of date
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from report_cc_round3 import cc_round3_section
from report_prune import prune_section

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
START = "<!-- results:start -->"
END = "<!-- results:end -->"
DATASET_ORDER = ("digits", "mnist5k", "finegrained", "cifar10", "cifar100", "cub200")
CHANNEL_LOSSES = {"cc": "CC-Loss", "mc": "MC-Loss"}
#: Rows compared with CE in the verdicts: the channel losses, and the losses of the
#: ``defaults-*`` parts (trained at the defaults that changed after the other parts).
VERDICT_LOSSES = {
    **CHANNEL_LOSSES,
    "cc_default": "CC-Loss (margin form, side branch: the defaults before the gate)",
    "center_default": "centre loss (published centre update, defaults)",
}


# -- reading -------------------------------------------------------------------------------------
def _read_json(path: Path, include_quick: bool = False) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or (data.get("quick") and not include_quick):
        return None
    return data


def _float(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


def read_study(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``study_<part>.csv`` with numbers parsed."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("test_acc_mean", "test_acc_std", "train_time_mean_s"):
            row[key] = _float(row.get(key))
        for key in ("seeds", "finished_seeds", "diverged_seeds", "epochs"):
            row[key] = int(row[key]) if row.get(key) else 0
        row["params"] = json.loads(row["params"]) if row.get("params") else {}
    return rows


def load(results: Path, *, include_quick: bool = False) -> dict[str, Any]:
    """Everything the report uses, keyed by kind; missing files are simply absent."""
    found: dict[str, Any] = {"study": {}, "sweeps": {}, "speed": {}}
    for path in sorted(results.glob("study_*.json")):
        meta = _read_json(path, include_quick)
        if meta is None:
            continue
        part = meta.get("part", path.stem.removeprefix("study_"))
        csv_path = path.with_suffix(".csv")
        png = results / f"study_{part}_curves.png"
        entry = {"meta": meta, "png": png if png.exists() else None}
        if meta.get("kind") == "sweep":
            found["sweeps"][meta["dataset"]] = entry
        elif csv_path.exists():
            entry["rows"] = read_study(csv_path)
            found["study"][meta.get("column", meta["dataset"])] = entry
    found["tune"] = {}
    for path in sorted(results.glob("tune_*.json")):
        data = _read_json(path, include_quick)
        if data is not None and "dataset" in data:
            found["tune"][data["dataset"]] = data
    calibration = results / "tune_calibration.json"
    found["tune_calibration"] = (
        _read_json(calibration, include_quick) if calibration.exists() else None
    )
    for name in ("train_step", "losses", "scaling"):
        for path in sorted(results.glob(f"{name}_*.json")):
            data = _read_json(path, include_quick)
            if data is not None:
                png = path.with_suffix(".png")
                data["_png"] = png if png.exists() else None
                found["speed"].setdefault(name, []).append(data)
    for name in ("cc_loss_cpu", "mc_loss_cpu", "data_cpu", "gpu_check_cuda"):
        data = _read_json(results / f"{name}.json", include_quick)
        if data is not None:
            found["speed"][name] = [data]
    prune = _read_json(results / "prune_cpu.json", include_quick)
    if prune is not None and prune.get("rows"):
        found["prune"] = {**prune, "latency": _read_json(results / "prune_latency_cpu.json")}
    cc_forms = _read_json(results / "cc_forms.json", include_quick)
    if cc_forms is not None and cc_forms.get("rows"):
        found["cc_forms"] = cc_forms
    for name in ("cc_round3", "cc_grad_share"):
        found[name] = _read_json(results / f"{name}.json", include_quick)
    return found


# -- formatting ----------------------------------------------------------------------------------
def machine_line(meta: dict[str, Any] | None) -> str:
    """``AMD EPYC (2 cores, 1 thread), torch 2.x, commit abc1234``."""
    if not meta:
        return "unknown machine"
    where = meta.get("gpu") or meta.get("cpu_model") or meta.get("cpu") or "unknown CPU"
    cores = meta.get("cpu_count")
    threads = meta.get("torch_threads", meta.get("threads"))
    bits = [
        f"{cores} cores" if cores else None,
        f"{threads} torch thread{'s' if threads != 1 else ''}" if threads else None,
    ]
    inner = ", ".join(b for b in bits if b)
    git = meta.get("git") or {}
    commit = (git.get("commit") or "unknown")[:10]
    dirty = " + uncommitted changes" if git.get("dirty") else ""
    return f"{where}{f' ({inner})' if inner else ''}, torch {meta.get('torch', '?')}, commit `{commit}`{dirty}"


def pct(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def link(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def verdict(name: str, row: dict[str, Any], ce: dict[str, Any], dataset: str) -> str:
    """A plain sentence: does ``row`` beat CE on ``dataset`` (mean, and beyond 2 SE)?"""
    label = VERDICT_LOSSES.get(name, name)
    m, s, n = row["test_acc_mean"], row["test_acc_std"], row["finished_seeds"]
    cm, cs, cn = ce["test_acc_mean"], ce["test_acc_std"], ce["finished_seeds"]
    if math.isnan(m) or math.isnan(cm):
        return f"{dataset}: {label} vs CE: no finished runs to compare."
    diff = 100 * (m - cm)
    se = 100 * math.sqrt((s**2 / n if n else 0.0) + (cs**2 / cn if cn else 0.0))
    nums = f"{100 * m:.2f} % vs {100 * cm:.2f} %, {diff:+.2f} points"
    if diff <= 0:
        return f"{dataset}: **{label} does not beat CE** ({nums})."
    if min(n, cn) < 2:
        return (
            f"{dataset}: {label} has a higher mean than CE ({nums}) from a single seed, "
            "which is **not evidence of a win** (no error estimate)."
        )
    if diff <= 2 * se:
        return (
            f"{dataset}: {label} has a higher mean than CE ({nums}), but the difference is within "
            f"2 standard errors ({2 * se:.2f} points), so it is **not a reliable win** with "
            f"{min(n, cn)} seeds."
        )
    return (
        f"{dataset}: {label} beats CE ({nums}; more than 2 standard errors, {2 * se:.2f} points)."
    )


def ranking(rows: dict[str, dict[str, Any]], dataset: str) -> str:
    """Where CC and MC rank among all losses by mean test accuracy (1 = best)."""
    ordered = sorted(
        (r for r in rows.values() if not math.isnan(r["test_acc_mean"])),
        key=lambda r: -r["test_acc_mean"],
    )
    if not ordered:
        return f"{dataset}: no finished runs."
    top = ordered[0]["test_acc_mean"]
    best = ", ".join(r["label"] for r in ordered if r["test_acc_mean"] == top)
    ranks = []
    for name, label in VERDICT_LOSSES.items():
        if name in rows and not math.isnan(rows[name]["test_acc_mean"]):
            rank = 1 + sum(r["test_acc_mean"] > rows[name]["test_acc_mean"] for r in ordered)
            ranks.append(f"{label} ranks {rank} of {len(ordered)}")
    ranked = "; " + ", ".join(ranks) + " by mean (ties share a rank)" if ranks else ""
    return f"{dataset}: highest mean {best} ({100 * top:.2f} %){ranked}."


def transferred(meta: dict[str, Any]) -> str:
    """For a part on another backbone than its sweep's: where its CC/MC values come from."""
    if meta.get("column", meta.get("dataset")) == meta.get("dataset") or not meta.get("chosen"):
        return ""
    return (
        f", CC/MC settings chosen on validation by `{meta.get('chosen_from')}` (the ConvNet) and "
        "reused unchanged"
    )


def column_order(dataset: str) -> int:
    """Known data sets in ``DATASET_ORDER``, others after them."""
    return DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER)


def study_section(found: dict[str, Any], base: Path) -> list[str]:
    study = found["study"]
    out = ["### Accuracy study", ""]
    if not study:
        return out + [
            "No study results yet: run `python benchmarks/study/run_study.py --part sweep-digits "
            "--part digits` (see `--list`), then `make report`.",
            "",
        ]
    datasets = sorted(study, key=lambda d: (column_order(study[d]["meta"]["dataset"]), d))
    labels: list[str] = []
    for d in datasets:
        labels += [r["label"] for r in study[d]["rows"] if r["label"] not in labels]
    out += [
        "Final-epoch test accuracy (%), mean ± sample std over seeds (`benchmarks/study/`). "
        "CC-Loss and MC-Loss are added to cross-entropy with hyper-parameters chosen on a "
        "validation split carved from the training data (never on test); every other loss "
        "uses its paper's defaults without tuning, which favours CC and MC. To rerun a column: "
        "`python benchmarks/study/run_study.py --part NAME` (`--list` shows the parts and their "
        "cost; finished runs are skipped), then `make report`.",
        "",
    ]
    if any(study[d]["meta"].get("kind") == "tuned" for d in datasets):
        out += [
            "Columns marked *every loss tuned* are the fair comparison: every loss, the "
            "baselines included, was tuned by `chanloss tune` with the same budget on "
            "validation (its declared search space plus the learning rate), then trained with "
            "the chosen settings on the full training split (`run_study.py --part tuned-NAME`).",
            "",
        ]
    header = "| loss | " + " | ".join(datasets) + " |"
    out += [header, "|---|" + "---|" * len(datasets)]
    best = {
        d: max(
            (r["test_acc_mean"] for r in study[d]["rows"] if not math.isnan(r["test_acc_mean"])),
            default=math.nan,
        )
        for d in datasets
    }
    blank = False
    for label in labels:
        cells = []
        for d in datasets:
            row = next((r for r in study[d]["rows"] if r["label"] == label), None)
            if row is None:
                cells.append("—")
                blank = True
                continue
            cell = pct(row["test_acc_mean"], row["test_acc_std"])
            if row["test_acc_mean"] == best[d]:
                cell = f"**{cell}**"
            if row["diverged_seeds"]:
                cell += f" ({row['diverged_seeds']} of {row['seeds']} seeds diverged)"
            cells.append(cell)
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")
    if blank:
        out += [
            "— : not trained in that part (the ResNet-20 parts train the ten losses the "
            "study protocol names, to fit a part in two hours; the *current defaults* parts "
            "train CE and the two losses whose defaults changed after the other parts were "
            "trained: `cc_default` is CC-Loss in its margin form on the side branch (the default "
            "until the gate reading), `center_default` the "
            "centre loss with the published centre update, both at their defaults, untuned; "
            "the `cc` and `center` rows keep the ratio form and optimiser-moved centres they "
            "were trained with).",
            "",
        ]
    lines = []
    for d in datasets:
        meta = study[d]["meta"]
        rows = study[d]["rows"]
        seeds = sorted({r["seeds"] for r in rows})
        partial = "" if meta.get("complete") else " **(partial: not every run has finished)**"
        recipe = meta.get("recipe", {})
        lines.append(
            f"- {d}: {recipe.get('model', {}).get('name', '?')}, {meta.get('epochs')} epochs, "
            f"{'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''}{partial}"
            f"{transferred(meta)}; "
            f"files last written on {machine_line(meta.get('machine'))}; "
            f"{fmt_seconds(meta.get('run_wall_time_sum_s'))} wall-clock for all runs "
            f"({fmt_seconds(meta.get('run_time_sum_s'))} in the training loops)."
        )
    out += ["Runs:", "", *lines, ""]
    out += ["Where CC-Loss and MC-Loss stand against cross-entropy:", ""]
    for d in datasets:
        rows = {r["label"]: r for r in study[d]["rows"]}
        if "ce" not in rows:
            continue
        out += [
            f"- {verdict(name, rows[name], rows['ce'], d)}"
            for name in VERDICT_LOSSES
            if name in rows
        ]
        out.append(f"- {ranking(rows, d)}")
    out.append("")
    sweeps = found["sweeps"]
    if sweeps:
        out += [
            "Hyper-parameters chosen on validation (`study_sweep-<dataset>.csv` has every grid point):",
            "",
        ]
        for d in sorted(sweeps, key=column_order):
            meta = sweeps[d]["meta"]
            val = meta.get("chosen_val_acc", {})
            parts = []
            for name, params in meta.get("chosen", {}).items():
                shown = ", ".join(f"{k}={fmt_param(v)}" for k, v in params.items())
                acc = val.get(name)
                extra = f" (val {pct(acc[0], acc[1])} %)" if acc else ""
                parts.append(f"{CHANNEL_LOSSES.get(name, name)}: {shown}{extra}")
            partial = "" if meta.get("complete") else " (sweep not complete)"
            out.append(
                f"- {d}{partial}: "
                + "; ".join(parts)
                + f" — grid {grid_text(meta.get('grids', {}))}: {meta.get('configs', '?')} settings x "
                f"{meta.get('seeds')} seeds, validation fraction {meta.get('val_fraction', '?')}, "
                f"{fmt_seconds(meta.get('run_wall_time_sum_s'))} wall-clock."
            )
        out.append("")
    plots = [(d, study[d]["png"]) for d in datasets if study[d].get("png")]
    plots += [(f"sweep-{d}", sweeps[d]["png"]) for d in sweeps if sweeps[d].get("png")]
    if plots:
        out += ["Curves: " + ", ".join(f"[{name}]({link(p, base)})" for name, p in plots), ""]
    return out


def _verdict_word(beyond: bool | None, diff: float) -> str:
    if beyond is None:
        return "no noise estimate"
    if not beyond:
        return "no difference"
    return "gain" if diff > 0 else "loss"


def tune_section(found: dict[str, Any]) -> list[str]:
    """``tune_<dataset>.json`` (``benchmarks/bench_tune.py``): the verdict of ``chanloss tune``
    next to a 3-seed test comparison; ``tune_calibration.json``: how often the verdict is right."""
    tuned = {d: v for d, v in found.get("tune", {}).items() if "losses" in v}
    calibration = found.get("tune_calibration")
    if not tuned and not calibration:
        return []
    out = ["### Tuning with `chanloss tune`: the verdict against the test split", ""]
    if tuned:
        out += [
            "`benchmarks/bench_tune.py`: `chanloss tune` as a user runs it (search on a 20 % "
            "validation split with the noise pruner, the 3 best settings re-run on a fresh seed, "
            "then the paired 5-fold confirmation against CE alone and its verdict); then, to check "
            "the verdict, CE and the chosen setting trained on the whole training split over 3 "
            "fresh seeds and scored once on test (two-standard-error rule). Gains in points.",
            "",
            "| data set, loss | chosen | trials (per hour of search) | noise (seed std) | "
            "cross-validated gain (threshold; detectable) | verdict | stuck runs (search; folds) "
            "| test gain (2 SE) | test says | agree |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for d in sorted(tuned, key=column_order):
            data = tuned[d]
            for loss, e in data["losses"].items():
                label = f"{d}, {CHANNEL_LOSSES.get(loss, loss)}"
                counts = e["counts"]
                trials = f"{counts['COMPLETE']} + {counts['PRUNED']} pruned" + (
                    f" ({e['trials_per_hour']:.0f})" if e.get("trials_per_hour") else ""
                )
                stuck = e.get("stuck")
                stuck_text = (
                    f"{stuck.get('search', 0)}; {stuck.get('confirmation', 0)}" if stuck else "-"
                )
                noise = e["noise"].get("std")
                noise_text = f"{100 * noise:.2f}" if noise is not None else "-"
                if "test" not in e:
                    out.append(f"| {label} | learned nothing | {trials} | {noise_text} | - | - "
                               f"| {stuck_text} | - | - | - |")  # fmt: skip
                    continue
                chosen = ", ".join(f"{k}={fmt_param(v)}" for k, v in e["chosen"].items())
                cv, t = e["cv"], e["test"]
                out.append(
                    f"| {label} | {chosen} | {trials} | {noise_text} | "
                    f"{100 * cv['diff']:+.2f} (±{100 * cv['threshold']:.2f}; "
                    f"{100 * cv['detectable']:.2f}) | "
                    f"{e.get('answer') or _verdict_word(cv['beyond'], cv['diff'])} | {stuck_text} | "
                    f"{100 * t['diff']:+.2f} ({'-' if t['se'] is None else format(200 * t['se'], '.2f')}) | "
                    f"{_verdict_word(t['beyond'], t['diff'])} | {'yes' if e['agrees'] else '**no**'} |"
                )
        out.append("")
        for d in sorted(tuned, key=column_order):
            data = tuned[d]
            conv = [e.get("ce_gain_last_quarter") for e in data["losses"].values()]
            conv = [c for c in conv if c is not None]
            out.append(
                f"- {d}: {data['recipe']['model']['name']} width "
                f"{data['recipe']['model'].get('width')}, {data['epochs']} epochs, "
                + (
                    f"{data['trials_per_search']} trials per search"
                    if data.get("trials_per_search")
                    else f"--timeout {data.get('timeout')} per tune"
                )
                + f", {data['jobs']} job"
                f"{'s' if data['jobs'] > 1 else ''}; CE's validation accuracy rose "
                + (
                    f"{100 * max(conv):+.2f} points at most over the last quarter of the epochs"
                    if conv
                    else "(not measured)"
                )  # fmt: skip
                + f"; {fmt_seconds(data['wall_s'])} wall-clock for the invocation that wrote the "
                "file (finished trials and runs of earlier invocations reused) on "
                f"{machine_line(data.get('machine'))}" + _rescored_text(data) + "."
            )
            out += _reconfirmed_lines(d, data)
        out.append("")
    if calibration:
        rows = calibration["rows"]
        null = [r for r in rows if r["kind"] == "null"]
        pos = [r for r in rows if r["kind"] == "positive"]
        out += [
            f"`benchmarks/bench_tune_calibration.py`: the same {calibration['folds']}-fold "
            "confirmation on pairs whose answer is known. Same model (CE against CE + a "
            "zero-weight MC-Loss on another seed, digits, small ConvNet): the verdict said "
            f'"no difference" in **{sum(r["verdict"] == "no difference" for r in null)} of '
            f"{len(null)}** repeats ({100 * calibration['null_no_difference_rate']:.0f} %)"
            + (
                f"; CE + MC-Loss on the fine-grained set (the demo's settings, where MC-Loss "
                f'helps): "gain" in **{sum(r["verdict"] == "better" for r in pos)} of '
                f"{len(pos)}** (mean cross-validated gain "
                f"{100 * sum(r['diff'] for r in pos) / len(pos):+.2f} points, threshold "
                f"±{100 * sum(r['threshold'] for r in pos) / len(pos):.2f})"
                if pos
                else ""
            )
            + _corrected_text(rows)
            + _unstable_text(calibration)
            + f". {fmt_seconds(calibration['wall_s'])} wall-clock on "
            f"{machine_line(calibration.get('machine'))}" + _rescored_text(calibration) + ".",
            "",
        ]
    return out


def _unstable_text(calibration: dict[str, Any]) -> str:
    """The unstable-recipe case: were its stuck runs found, and what did the verdict say?"""
    bad = [r for r in calibration["rows"] if r["kind"] == "unstable"]
    if not bad:
        return ""
    lr = calibration.get("unstable_config", {}).get("optim", {}).get("lr")
    stuck = sum(len(r.get("stuck", [])) for r in bad)
    runs = sum(r.get("runs", 0) + 2 * len(r.get("reruns", [])) for r in bad)
    answers = {a: sum(r.get("answer") == a for r in bad) for a in ("unstable", "gain")}
    return (
        f"; the same pair at a learning rate too high for the recipe (SGD {lr}, no warm-up): "
        f"**{stuck} of {runs}** fold runs flagged stuck (reruns included), stuck runs found in "
        f"{sum(bool(r.get('stuck')) for r in bad)} of {len(bad)} repeats, the verdict "
        f'"unstable" in **{answers["unstable"]} of {len(bad)}** and "gain" in '
        f"{answers['gain']} of {len(bad)}"
    )


def _corrected_text(rows: list[dict[str, Any]]) -> str:
    """How the Nadeau-Bengio corrected test, reported beside the verdict, would have ruled."""
    null = [r["p_corrected"] for r in rows if r["kind"] == "null" and "p_corrected" in r]
    pos = [r for r in rows if r["kind"] == "positive" and "p_corrected" in r]
    if not null:
        return ""
    return (
        f' (the Nadeau-Bengio corrected test beside it: "no difference" in '
        f"{sum(p >= 0.05 for p in null)} of {len(null)}"
        + (
            f', "gain" in {sum(r["p_corrected"] < 0.05 and r["diff"] > 0 for r in pos)} of '
            f"{len(pos)}"
            if pos
            else ""
        )  # fmt: skip
        + ")"
    )


def _reconfirmed_lines(dataset: str, data: dict[str, Any]) -> list[str]:
    """Confirmations rerun on the stored searches (``--reconfirm``), with what they said
    before."""
    lines = []
    for loss, e in data["losses"].items():
        again = e.get("reconfirmed")
        if not again:
            continue
        text = (f"- {dataset}, {CHANNEL_LOSSES.get(loss, loss)}: the confirmation was rerun on "
                f"the stored search by `{again['command']}` (git "
                f"{str(again['git'].get('commit'))[:7]}, {fmt_seconds(again['wall_s'])})")  # fmt: skip
        for before in again.get("earlier", []):
            cv = before["cv"]
            commit = str((before.get("git") or {}).get("commit"))[:7]
            text += (
                f"; before it (git {commit}): cross-validated {100 * cv['diff']:+.2f} "
                f"(±{100 * cv['threshold']:.2f}), {_verdict_word(cv['beyond'], cv['diff'])}, "
                f"agree with test: {'yes' if before.get('agrees') else 'no'}"
            )
        lines.append(text + ".")
    for loss, e in data["losses"].items():  # a loss kept from an earlier invocation's file
        run = e.get("run")
        if run and run.get("command"):
            commit = str(((run.get("machine") or {}).get("git") or {}).get("commit"))[:7]
            lines.append(f"- {dataset}, {CHANNEL_LOSSES.get(loss, loss)}: from an earlier "
                         f"invocation, `{run['command']}` (git {commit}, "
                         f"{fmt_seconds(run.get('wall_s') or 0)}).")  # fmt: skip
    return lines


def _rescored_text(data: dict[str, Any]) -> str:
    """Verdicts recomputed from the stored per-fold scores (``--rescore``): by which command."""
    again = data.get("rescored")
    if not again:
        return ""
    commit = (again.get("git") or {}).get("commit") or "?"
    return f"; verdicts recomputed from the stored fold scores by `{again['command']}` at commit `{commit[:10]}`"


def grid_text(grids: dict[str, dict[str, list[Any]]]) -> str:
    """``cc: weight {1, 0.1} x reduction {16}; mc: ...``."""
    return "; ".join(
        f"{CHANNEL_LOSSES.get(name, name)} "
        + " x ".join(f"{k} {{{', '.join(fmt_param(v) for v in vs)}}}" for k, vs in spec.items())
        for name, spec in grids.items()
    )


def fmt_param(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def speed_section(found: dict[str, Any], base: Path) -> list[str]:
    speed = found["speed"]
    out = ["### Speed", ""]
    if not speed:
        return out + ["No benchmark results yet: run `make bench`, then `make report`.", ""]
    for data in speed.get("train_step", []):
        target = 100 * data.get("target_overhead", 0.1)
        out += [
            f"Training step (forward, losses, backward, SGD step), median ms over interleaved "
            f"rounds in one process; {machine_line(data.get('machine'))} "
            f"(`benchmarks/bench_train_step.py`). Target: CC and MC add at most {target:.0f} %.",
            "",
            "| setup | CE | CE+CC | CE+MC | CE+CC / CE | CE+MC / CE |",
            "|---|---|---|---|---|---|",
        ]
        notes = []
        for r in data["results"]:
            v, o = r["variants"], r["overhead"]
            ratio_cells = []
            for key in ("ce+cc", "ce+mc"):
                if key not in o:
                    ratio_cells.append("")
                    continue
                ok = "meets target" if o[key]["within_target"] else "**misses** target"
                if o[key]["ratio_of_medians"] < 1.0:
                    ok += "; below 1 is run-to-run noise"
                ratio_cells.append(
                    f"{o[key]['ratio_of_medians']:.3f} (rounds {o[key]['per_round_ratio_p25']:.2f}"
                    f"–{o[key]['per_round_ratio_p75']:.2f}; {ok})"
                )
            out.append(
                f"| {r['model']} {r['image_size']} px, batch {r['batch']}, K={r['num_classes']} | "
                + " | ".join(f"{v[k]['median_ms']:.1f}" for k in ("ce", "ce+cc", "ce+mc"))
                + " | "
                + " | ".join(ratio_cells)
                + " |"
            )
            notes.append(f"{r['model']}: {r['note']}")
        out += ["", *[f"- {n}" for n in notes], ""]
    for data in speed.get("losses", []):
        out += [
            f"Forward + backward of every registered loss, median ms (peak MiB allocated during "
            f"the call); {machine_line(data.get('machine'))} (`benchmarks/bench_losses.py`):",
            "",
        ]
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in data["results"]:
            groups.setdefault(row["group"], []).append(row)
        names: list[str] = []
        for rows in groups.values():
            names += [r["loss"] for r in rows if r["loss"] not in names]
        short = [g.replace("logits/embedding ", "").replace("features ", "") for g in groups]
        out += ["| loss | " + " | ".join(short) + " |", "|---|" + "---|" * len(groups)]
        for name in names:
            cells = []
            for rows in groups.values():
                row = next((r for r in rows if r["loss"] == name), None)
                if row is None:
                    cells.append("")
                elif "skipped" in row:
                    cells.append("skipped")
                else:
                    mem = f" ({row['peak_bytes'] / 2**20:.1f})" if "peak_bytes" in row else ""
                    cells.append(f"{row['time']['median_ms']:.2f}{mem}")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    for data in speed.get("scaling", []):
        png = data.get("_png")
        out += [
            f"Scaling of CC-Loss and MC-Loss with batch, channels and classes "
            f"({machine_line(data.get('machine'))}, `benchmarks/bench_scaling.py`)"
            + ". Medians with quartile bands; the spread between rounds grows at the largest "
            "inputs." + (f"\n\n![scaling]({link(png, base)})" if png else ""),
            "",
        ]
    extra = []
    for data in speed.get("mc_loss_cpu", []):
        for r in data.get("results", []):
            try:
                extra.append(_mc_line(r))
            except (KeyError, TypeError, ValueError):
                extra.append("MC-Loss component benchmark: results in an unknown format.")
    for data in speed.get("cc_loss_cpu", []):
        try:
            line = _cc_line(data)
        except (KeyError, TypeError, ValueError, IndexError):
            line = "CC-Loss component benchmark: results in an unknown format."
        if line:
            extra.append(line)
    for data in speed.get("data_cpu", []):
        try:
            extra.append(_data_line(data))
        except (KeyError, TypeError, ValueError):
            extra.append("Data loading benchmark: results in an unknown format.")
    if extra:
        out += [*[f"- {e}" for e in extra], ""]
    for data in speed.get("gpu_check_cuda", []):
        try:
            out += _gpu_check_lines(data)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            out += ["GPU check: results in an unknown format.", ""]
    return out


def _data_line(data: dict[str, Any]) -> str:
    """One sentence from ``bench_data.py``: images per worker and the RSS of both modes."""
    rates = ", ".join(
        f"{name} px {r['images_per_cpu_s']:.0f}" for name, r in data["per_worker"].items()
    )
    rss = data["peak_rss"]
    return (
        f"Image decoding (decode, resize, random crop) per DataLoader worker, images per CPU "
        f"second: {rates}; peak RSS above the imports for {data['train_images']} training "
        f"images at 512 px: memory mode {rss['memory']['data_mb']:.0f} MB, stream mode "
        f"{rss['stream']['data_mb']:.0f} MB ({machine_line(data.get('machine'))}, "
        "`bench_data.py`)."
    )


def _gpu_check_lines(data: dict[str, Any]) -> list[str]:
    """The GPU check (``gpu_check.sh``): a sentence per section and the backbone table."""
    out = [
        f"GPU check ({machine_line(data.get('machine'))}, `benchmarks/gpu_check.sh`): "
        f"{'all checks passed' if data.get('ok') else '**some checks failed**'}.",
        "",
    ]
    losses = data.get("losses") or []
    if losses:
        match = sum(bool(r["fp32_match"]) for r in losses)
        finite = sum(bool(r["fp16_finite"]) and bool(r["bf16_finite"]) for r in losses)
        worst = max(r["fp32_grad_rel_diff"] for r in losses)
        out += [
            f"- Losses: {match} of {len(losses)} equal their CPU results in float32 (largest "
            f"relative gradient difference {worst:.1e}); {finite} of {len(losses)} finite under "
            "float16 and bfloat16 autocast.",
        ]
    for r in data.get("loss_speed") or []:
        out.append(
            f"- B={r['B']}, C={r['C']}, {r['H']}x{r['W']}, K={r['K']}: MC-Loss {r['mc_ms']:.2f} "
            f"ms ({r['mc_over_ce']:.1f}x the softmax cross-entropy), CC-Loss {r['cc_ms']:.2f} "
            f"ms ({r['cc_over_ce']:.1f}x), forward + backward."
        )
    stream = data.get("stream")
    if stream:
        out.append(
            f"- Stream mode ({stream['recipe']}, {stream['workers']} workers): "
            f"{stream['loading_images_per_s']:.0f} images/s loaded, "
            f"{stream['resnet50_training_images_per_s']:.0f} images/s into ResNet-50 training."
        )
    ddp = data.get("ddp")
    if ddp:
        out.append(f"- `chanloss train --nproc` with NCCL: {ddp['status']}.")
    out.append("")
    backbones = data.get("backbones") or []
    if backbones:
        out += [
            "| backbone | px | batch | losses | ms / step (AMP, channels-last) | images/s "
            "| CUB epoch (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in backbones:
            epoch = r.get("epoch_estimate_s")
            out.append(
                f"| {r['model']} | {r['image_size']} | {r['batch']} | {'+'.join(r['losses'])} "
                f"| {r['ms_per_step']:.1f} | {r['images_per_s']:.0f} "
                f"| {'' if epoch is None else f'{epoch:.0f}'} |"
            )
        out.append("")
    return out


def _mc_line(r: dict[str, Any]) -> str:
    """One sentence from a ``bench_mc_loss.py`` result (flat, or per clock ``cpu``/``wall``)."""
    s = r["shape"]
    clock = next((c for c in ("cpu", "wall") if isinstance(r.get(c), dict)), None)
    numbers = r[clock] if clock else r
    how = f" ({clock} clock)" if clock else ""
    return (
        f"MC-Loss at B={s['B']}, C={s['C']}, {s['H']}x{s['W']}, K={s['K']}: "
        f"{numbers['speedup_vs_reference']:.2f}x faster than the authors' code structure, "
        f"{numbers['ratio_to_floor']:.2f}x the time of a bare softmax forward+backward{how} "
        "(`bench_mc_loss.py`)."
    )


def _cc_line(data: dict[str, Any]) -> str | None:
    """One sentence from ``bench_cc_loss.py``: bytes per pair at the largest batch."""
    rows = data.get("batch_sweep", [])
    if not rows:
        return None
    big = rows[-1]
    ratio = big.get("naive_over_ours_peak")
    naive = f", {ratio:.1f}x less than a naive (B, B, C) form" if ratio else ""
    return (
        f"CC-Loss pairwise stage at B={big['batch']}, C={big['channels']}: "
        f"{big['pairs_bytes_per_pair']:.1f} bytes per pair{naive} (`bench_cc_loss.py`)."
    )


def _cc_setting(row: dict[str, Any]) -> str:
    """``ce`` or ``form=margin, weight=10, hidden 7 (reduction 4)[, class_balanced]``."""
    cc = next((e for e in row["losses"] if e["name"] == "cc"), None)
    if cc is None:
        return "ce (no CC-Loss)"
    channels = 30 if row["model"] == "convnet_small" else 64  # the study recipes' feature maps
    reduction = cc.get("reduction", 16)
    hidden = max(channels // reduction, min(cc.get("min_hidden", 1), channels))
    bits = [f"form={cc.get('form', 'ratio')}", f"weight={fmt_param(cc.get('weight', 1.0))}"]
    bits.append(f"hidden {hidden} (reduction {reduction})")
    if row.get("data", {}).get("sampler") == "class_balanced":
        bits.append(f"class_balanced {row['data'].get('samples_per_class', 4)}/class")
    return ", ".join(bits)


def cc_forms_section(found: dict[str, Any]) -> list[str]:
    """Every CC-Loss form measured by ``bench_cc_forms.py``, on validation, next to CE."""
    data = found.get("cc_forms")
    if not data:
        return []
    lines = [
        "### CC-Loss forms (validation)",
        "",
        "Final-epoch **validation** accuracy (%) of CE + CC-Loss in each form (the ratio is the "
        "original reconstruction; margin, softplus and cosine are our bounded alternatives, "
        "docs/cc-loss.md), mean ± sample std over seeds, from `benchmarks/bench_cc_forms.py` "
        "(`benchmarks/results/cc_forms.json`; the test split is never read). Shortened recipes "
        "(epochs below) to fit a shared 2-core CPU.",
        "",
    ]
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in data["rows"]:
        groups.setdefault((row["dataset"], row["model"], row["epochs"]), []).append(row)
    for (dataset, model, epochs), rows in sorted(
        groups.items(), key=lambda kv: (column_order(kv[0][0]), kv[0])
    ):
        ce = next((r for r in rows if r["label"] == "ce"), None)
        seeds = sorted({r["seeds"] for r in rows})
        lines += [
            f"{dataset}, {model}, {epochs} epochs, {'/'.join(map(str, seeds))} seed(s):",
            "",
            "| setting | val acc | vs CE (points) |",
            "|---|---|---|",
        ]
        for row in sorted(rows, key=lambda r: (r["label"] != "ce", -(r["val_acc_mean"] or 0))):
            mean, std = row["val_acc_mean"], row["val_acc_std"]
            delta = "" if ce is None or row is ce else f"{100 * (mean - ce['val_acc_mean']):+.2f}"
            lines.append(f"| {_cc_setting(row)} | {pct(mean, std)} | {delta} |")
        lines.append("")
    lines += [
        f"Runs: {machine_line(data.get('machine'))}.",
        "",
        "The side-branch default before the gate reading (`form=margin`, `weight=1`) was "
        "chosen from these validation results (the gate reading's default is in the section "
        "above); the `cc` rows of the accuracy study above are the ratio form its sweeps "
        "tuned, and its `center` rows were trained with optimiser-moved centres "
        "(`center_update: sgd`), before the published update became the default; the "
        "*current defaults* columns of the study (`cc_default`, `center_default`; "
        "`run_study.py --part defaults-NAME`) train both at their current defaults, untuned, "
        "beside CE.",
        "",
    ]
    return lines


def render(found: dict[str, Any], base: Path) -> str:
    """The block between the markers (markers included)."""
    lines = [
        START,
        "## Results",
        "",
        "_Generated by `make report` (`benchmarks/report.py`) from `benchmarks/results/`; "
        "edits inside this block are overwritten._",
        "",
        *study_section(found, base),
        *tune_section(found),
        *cc_round3_section(found.get("cc_round3"), found.get("cc_grad_share")),
        *cc_forms_section(found),
        *prune_section(found.get("prune"), machine_line),
        *speed_section(found, base),
        END,
    ]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with the marked block replaced (or appended when there are no markers)."""
    start, end = text.find(START), text.find(END)
    if start == -1 and end == -1:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    if start == -1 or end == -1 or end < start:
        raise SystemExit(f"the page has a broken results block: need {START} before {END}")
    return text[:start] + block + text[end + len(END) :]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    parser.add_argument(
        "--readme",
        "--page",
        dest="readme",
        type=Path,
        default=REPO_ROOT / "docs" / "results.md",
        help="the page holding the results block (default docs/results.md)",
    )
    parser.add_argument(
        "--include-quick", action="store_true", help="also use results of --quick runs"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print", action="store_true", help="print the block, change nothing")
    mode.add_argument("--check", action="store_true", help="exit 1 if the page is out of date")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    found = load(args.results, include_quick=args.include_quick)
    block = render(found, args.readme.resolve().parent)
    if args.print:
        print(block)
        return 0
    text = args.readme.read_text() if args.readme.exists() else ""
    new = replace_block(text, block)
    if args.check:
        if new != text:
            print(f"{args.readme} is out of date; run make report", file=sys.stderr)
            return 1
        return 0
    if new != text:
        fd, tmp = tempfile.mkstemp(
            dir=args.readme.resolve().parent, prefix=".results.", suffix=".tmp"
        )
        with os.fdopen(fd, "w") as f:
            f.write(new)
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.readme)
    print(f"{'updated' if new != text else 'unchanged'}: {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
