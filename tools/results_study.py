"""The results page's accuracy-study and tune sections (``study_*`` and ``tune_*`` files)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from results_format import (
    CHANNEL_LOSSES,
    VERDICT_LOSSES,
    column_order,
    fmt_param,
    fmt_seconds,
    grid_text,
    link,
    machine_line,
    pct,
)

from chanloss.experiments.verdict import gap_of

#: Under the study table when a part did not train every loss.
BLANK_NOTE = (
    "— : not trained in that part (the ResNet-20 parts train the ten losses the "
    "study protocol names, to fit a part in two hours; the *current defaults* parts "
    "train CE and the two losses whose defaults changed after the other parts were "
    "trained: `cc_default` is CC-Loss in its margin form on the side branch (the default "
    "until the gate reading), `center_default` the "
    "centre loss with the published centre update, both at their defaults, untuned; "
    "the `cc` and `center` rows keep the ratio form and optimiser-moved centres they "
    "were trained with)."
)


def verdict(name: str, row: dict[str, Any], ce: dict[str, Any], dataset: str) -> str:
    """A plain sentence: does ``row`` beat CE on ``dataset`` (mean, and beyond 2 standard
    errors: the package's rule, :func:`chanloss.experiments.verdict.gap_of`)?"""
    label = VERDICT_LOSSES.get(name, name)
    m, s, n = row["test_acc_mean"], row["test_acc_std"], row["finished_seeds"]
    cm, cs, cn = ce["test_acc_mean"], ce["test_acc_std"], ce["finished_seeds"]
    if math.isnan(m) or math.isnan(cm):
        return f"{dataset}: {label} vs CE: no finished runs to compare."
    found = gap_of(m, s, n, cm, cs, cn)
    nums = f"{100 * m:.2f} % vs {100 * cm:.2f} %, {100 * found.diff:+.2f} points"
    if found.diff <= 0:
        return f"{dataset}: **{label} does not beat CE** ({nums})."
    if found.beyond is None:
        return (
            f"{dataset}: {label} has a higher mean than CE ({nums}) from a single seed, "
            "which is **not evidence of a win** (no error estimate)."
        )
    threshold = 100 * found.threshold
    if not found.beyond:
        return (
            f"{dataset}: {label} has a higher mean than CE ({nums}), but the difference is within "
            f"2 standard errors ({threshold:.2f} points), so it is **not a reliable win** with "
            f"{min(n, cn)} seeds."
        )
    return f"{dataset}: {label} beats CE ({nums}; more than 2 standard errors, {threshold:.2f} points)."


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
        out += [BLANK_NOTE, ""]
    lines = [_run_line(d, study[d]) for d in datasets]
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
    out += _sweep_lines(sweeps)
    plots = [(d, study[d]["png"]) for d in datasets if study[d].get("png")]
    plots += [(f"sweep-{d}", sweeps[d]["png"]) for d in sweeps if sweeps[d].get("png")]
    if plots:
        out += ["Curves: " + ", ".join(f"[{name}]({link(p, base)})" for name, p in plots), ""]
    return out


def _run_line(d: str, entry: dict[str, Any]) -> str:
    """The "Runs:" line of a study column: recipe, seeds, machine, time."""
    meta = entry["meta"]
    rows = entry["rows"]
    seeds = sorted({r["seeds"] for r in rows})
    partial = "" if meta.get("complete") else " **(partial: not every run has finished)**"
    recipe = meta.get("recipe", {})
    return (
        f"- {d}: {recipe.get('model', {}).get('name', '?')}, {meta.get('epochs')} epochs, "
        f"{'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''}{partial}"
        f"{transferred(meta)}; "
        f"files last written on {machine_line(meta.get('machine'))}; "
        f"{fmt_seconds(meta.get('run_wall_time_sum_s'))} wall-clock for all runs "
        f"({fmt_seconds(meta.get('run_time_sum_s'))} in the training loops)."
    )


def _sweep_lines(sweeps: dict[str, Any]) -> list[str]:
    """The CC/MC values each sweep chose on validation."""
    if not sweeps:
        return []
    out: list[str] = []
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
    return out


def _verdict_word(beyond: bool | None, diff: float) -> str:
    if beyond is None:
        return "no noise estimate"
    if not beyond:
        return "cannot tell"
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
        out += _calibration_lines(calibration)
    return out


def _calibration_lines(calibration: dict[str, Any]) -> list[str]:
    """``tune_calibration.json``: how often the verdict is right on pairs with a known answer."""
    rows = calibration["rows"]
    null = [r for r in rows if r["kind"] == "null"]
    pos = [r for r in rows if r["kind"] == "positive"]
    return [
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
                f"the stored search by `{_rerunnable(again['command'])}` (git "
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
    return f"; verdicts recomputed from the stored fold scores by `{_rerunnable(again['command'])}` at commit `{commit[:10]}`"


def _rerunnable(command: str) -> str:
    """A recorded ``--rescore`` or ``--reconfirm`` command as it is run now: those options moved
    from the benchmarks to ``tools/tune_results.py`` with the same meaning."""
    old = "benchmarks/bench_tune_calibration.py --rescore"
    command = command.replace(old, "tools/tune_results.py --rescore --calibration")
    return command.replace("benchmarks/bench_tune.py", "tools/tune_results.py")
