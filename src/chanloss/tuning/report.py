"""The HTML report of ``chanloss tune``: optimisation history, parameter importances, accuracy
against each parameter, learning curves of the trials and the confirmation table.

Written like ``chanloss analyze``'s report: ``report.html`` next to its PNGs (referenced by
relative paths, so the folder is self-contained) and ``trials.csv``.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from chanloss.config.search import Dimension  # noqa: E402
from chanloss.core.atomic import write_text  # noqa: E402
from chanloss.core.html_style import REPORT_CSS  # noqa: E402
from chanloss.core.text import mean_std, pct  # noqa: E402
from chanloss.losses.search import Choice, LogUniform  # noqa: E402
from chanloss.tuning.output import (  # noqa: E402
    advice,
    corrected_line,
    epoch_noise_line,
    gain_text,
    noise_line,
    power_line,
    search_stuck_text,
    stuck_lines,
    trial_rows,
)

__all__ = ["write_report"]

_DPI = 100


def _trials(study: Any) -> tuple[list[Any], list[Any]]:
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    return complete, pruned


def _last(t: Any) -> float | None:
    iv = t.intermediate_values
    return iv[max(iv)] if iv else None


def plot_history(study: Any, path: Path) -> None:
    """Validation accuracy per trial (complete: dots, pruned: crosses at their last value) and
    the best so far."""
    complete, pruned = _trials(study)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.scatter(
        [t.number for t in complete], [100 * t.value for t in complete], label="complete", s=22
    )
    px = [(t.number, _last(t)) for t in pruned if _last(t) is not None]
    if px:
        ax.scatter(
            [n for n, _ in px], [100 * v for _, v in px], marker="x", c="grey", label="pruned"
        )
    best, xs, ys = -math.inf, [], []
    for t in sorted(complete, key=lambda t: t.number):
        best = max(best, t.value)
        xs.append(t.number)
        ys.append(100 * best)
    if xs:
        last = max(t.number for t in [*complete, *pruned])
        if last > xs[-1]:  # the line runs on to the last trial
            xs, ys = [*xs, last], [*ys, ys[-1]]
        ax.step(xs, ys, where="post", c="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def plot_importances(importances: dict[str, float], path: Path) -> None:
    """Horizontal bars of the parameter importances."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set_xlabel("importance (share of the variance of the validation accuracy)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def plot_params(study: Any, dims: list[Dimension], path: Path) -> None:
    """Validation accuracy of the complete trials against each parameter (log axes for
    log-uniform ranges; choices as positions)."""
    complete, pruned = _trials(study)
    cols = min(3, len(dims))
    rows = math.ceil(len(dims) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.3 * rows), squeeze=False)
    for ax, dim in zip(axes.flat, dims, strict=False):
        for trials, style in ((complete, {"s": 22}), (pruned, {"marker": "x", "c": "grey"})):
            pts = [
                (t.params[dim.name], t.value if t.value is not None else _last(t))
                for t in trials
                if dim.name in t.params
            ]
            pts = [(x, y) for x, y in pts if y is not None]
            if not pts:
                continue
            xs = [x for x, _ in pts]
            if isinstance(dim.param, Choice):
                labels = [str(v) for v in dim.param.values]
                xs = [labels.index(str(x)) if str(x) in labels else -1 for x in xs]
            ax.scatter(xs, [100 * y for _, y in pts], **style)
        if isinstance(dim.param, Choice):
            ax.set_xticks(
                range(len(dim.param.values)),
                [f"{v:.3g}" if isinstance(v, float) else str(v) for v in dim.param.values],
            )
            ax.set_xlim(-0.5, len(dim.param.values) - 0.5)
        elif isinstance(dim.param, LogUniform):
            ax.set_xscale("log")
        ax.set_title(dim.name, fontsize=9)
        ax.set_ylabel("val accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(dims) :]:
        ax.axis("off")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.93, wspace=0.3, hspace=0.45)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def plot_curves(study: Any, path: Path) -> None:
    """Per-epoch validation accuracy of every trial (what the pruner saw)."""
    complete, pruned = _trials(study)
    fig, ax = plt.subplots(figsize=(8, 4))
    for trials, style in (
        (complete, {"c": "C0", "alpha": 0.6}),
        (pruned, {"c": "grey", "alpha": 0.5, "ls": "--"}),
    ):
        for t in trials:
            iv = sorted(t.intermediate_values.items())
            if iv:
                ax.plot([e for e, _ in iv], [100 * v for _, v in iv], lw=1, **style)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("complete (blue) and pruned (grey, dashed) trials", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)


def importances(study: Any) -> tuple[dict[str, float], str]:
    """Optuna's parameter importances, or an empty mapping and the reason."""
    import optuna

    complete, _ = _trials(study)
    if len(complete) < 3:
        return {}, f"needs at least 3 complete trials, has {len(complete)}"
    try:
        return dict(optuna.importance.get_param_importances(study)), ""
    except (RuntimeError, ValueError, ZeroDivisionError) as err:
        return {}, f"not available ({err})"


def _pct(values: list[float]) -> str:
    return pct(*mean_std(values))


def write_report(study: Any, dims: list[Dimension], summary: dict[str, Any], out_dir: Path) -> None:
    """Write ``report.html`` and its PNGs into ``out_dir``."""
    plot_history(study, out_dir / "history.png")
    plot_curves(study, out_dir / "curves.png")
    plot_params(study, dims, out_dir / "params.png")
    if summary.get("learned", True):
        imp, why = importances(study)
    else:
        imp, why = {}, "skipped: no trial learned more than chance"
    if imp:
        plot_importances(imp, out_dir / "importances.png")
    parts = [
        *_head(summary),
        *_result(summary["best"], dims),
        *_reruns(summary.get("reruns") or []),
        *_confirmation(summary.get("confirmation")),
        *_figures(bool(imp), why),
        _trials_table(study, dims, summary),
        "<p class='note'>All trials: <a href='trials.csv'>trials.csv</a>.</p>",
        "</body></html>\n",
    ]
    write_text(out_dir / "report.html", "\n".join(parts))


def _head(summary: dict[str, Any]) -> list[str]:
    """The page's head, the verdict, the search in one paragraph, the noise and the notes."""
    counts = summary["counts"]
    esc = html.escape
    return [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>chanloss tune</title>",
        f"<style>{REPORT_CSS}</style></head><body>",
        "<h1>chanloss tune</h1>",
        *_lead(summary),
        f"<p>Config <code>{esc(str(summary.get('config')))}</code>, storage "
        f"<code>{esc(summary['storage'])}</code>: {counts['COMPLETE']} complete, "
        f"{counts['PRUNED']} pruned, {counts['FAIL']} failed trials (target "
        f"{summary['trials_target'] or 'until --timeout'}); {summary['wall_s']:.0f} s in this "
        f"invocation. A score is the {esc(summary.get('score', 'validation accuracy'))}.</p>",
        f"<p><b>{esc(noise_line(summary.get('noise')))}</b></p>",
        *(f"<p>{esc(line)}</p>" for line in [epoch_noise_line(summary.get("noise"))] if line),
        *(f"<p><b>{esc(note)}</b></p>" for note in summary.get("notes", [])),
        "<h2>Result</h2>",
    ]


def _result(best: dict[str, Any] | None, dims: list[Dimension]) -> list[str]:
    """The chosen setting and the range searched for each parameter."""
    if best is None:
        return ["<p>No setting is chosen (see above).</p>"]
    esc = html.escape
    rerun = best.get("rerun_val_acc")
    return [
        f"<p>Chosen: trial {best['trial']}, search score {100 * best['val_acc']:.2f}%"
        + (f", {100 * rerun:.2f}% re-run on a fresh seed" if rerun is not None else "")
        + ". <a href='best.yaml'>best.yaml</a> trains it; <a href='ce.yaml'>ce.yaml</a> "
        "trains CE alone.</p>",
        "<table><tr><th>parameter</th><th>chosen</th><th>searched over</th></tr>"
        + "".join(
            f"<tr><td class='l'>{esc(d.name)}</td><td>{esc(_val(best['params'].get(d.name)))}"
            f"</td><td class='l'>{esc(d.describe().split(': ', 1)[1])}</td></tr>"
            for d in dims
        )
        + "</table>",
    ]


def _reruns(reruns: list[dict[str, Any]]) -> list[str]:
    """The best settings re-run on a fresh seed (nothing without re-runs)."""
    if not reruns:
        return []
    return [
        "<h2>The best settings re-run on a fresh seed</h2>",
        "<table><tr><th>trial</th><th>search score</th><th>re-run score</th></tr>"
        + "".join(
            f"<tr><td>{r['trial']}</td><td>{100 * r['search_score']:.2f}%</td>"
            f"<td>{100 * r['rerun_score']:.2f}%</td></tr>"
            for r in reruns
        )
        + "</table>",
        "<p class='note'>The winner is the best re-run score: the search's best score is "
        "the maximum over many noisy trials and so biased upward; the re-run is not.</p>",
    ]


def _confirmation(conf: dict[str, Any] | None) -> list[str]:
    """The confirmation against CE alone: its table, verdict and how it was made."""
    if not conf:
        return []
    esc = html.escape
    folds = conf.get("mode") == "folds"
    head = f"validation ({conf['folds']} folds, paired)" if folds else "validation"
    how = (
        f"The winner and CE alone were trained on the same {conf['folds']} stratified "
        "folds of the training split with the same seed, each fold held out once; the "
        "gain is judged by a paired t-test on the per-fold differences (is it beyond "
        "what seeds and the choice of validation images give, on this data?); the "
        "Nadeau-Bengio corrected test beside it asks whether it would hold on another "
        "training set of this size (the folds' training sets overlap). Then "
        "both were trained once on the whole training split and the test split read "
        "once each: information, never a choice."
        if folds
        else f"Both trained again over {len(conf['seeds'])} fresh seed(s) "
        f"({', '.join(map(str, conf['seeds']))}); the gain counts as real only beyond "
        "two standard errors of the difference (Welch). The test split was read once "
        "per run, after training; it played no part in any choice."
    )
    return [
        "<h2>Confirmation against CE alone</h2>",
        f"<table><tr><th></th><th>{head}</th><th>test (read once)</th></tr>",
        f"<tr><td class='l'>CE alone</td><td>{_pct(conf['val']['ce'])}</td>"
        f"<td>{_pct(conf['test']['ce'])}</td></tr>",
        f"<tr><td class='l'>tuned (trial {conf['trial']})</td><td>{_pct(conf['val']['tuned'])}"
        f"</td><td>{_pct(conf['test']['tuned'])}</td></tr>",
        f"<tr><td class='l'>gain over CE</td><td>{esc(gain_text(conf['val']['gain']))}</td>"
        f"<td>{esc(gain_text(conf['test']['gain']))}</td></tr></table>",
        f"<p><b>Verdict: {esc(advice(conf))}</b></p>",
        *(f"<p>{esc(line)}</p>" for line in stuck_lines(conf)),
        f"<p>{esc(power_line(conf))}</p><p>{esc(corrected_line(conf))}</p>" if folds else "",
        "<p class='note'>" + how + "</p>",
    ]


def _figures(with_importances: bool, why: str) -> list[str]:
    """The figures: history, curves, importances (or why none), accuracy per parameter."""
    esc = html.escape
    return [
        "<h2>Optimisation history</h2>",
        "<img src='history.png' alt='validation accuracy per trial'>",
        "<p class='note'>Each point is a trial's final validation accuracy; crosses are "
        "pruned trials at their last evaluated epoch.</p>",
        "<img src='curves.png' alt='per-epoch validation accuracy of the trials'>",
        "<h2>Parameter importances</h2>",
        "<img src='importances.png' alt='parameter importances'>"
        if with_importances
        else f"<p class='note'>Parameter importances: {esc(why)}.</p>",
        "<h2>Validation accuracy against each parameter</h2>",
        "<img src='params.png' alt='accuracy against each parameter'>",
        "<p class='note'>A flat cloud means the parameter matters little in this range; "
        "a trend towards an end of the range means the range may be too narrow.</p>",
        "<h2>Trials</h2>",
    ]


def _trials_table(study: Any, dims: list[Dimension], summary: dict[str, Any]) -> str:
    """Every trial, best validation score first."""
    esc = html.escape
    rows = sorted(
        trial_rows(
            study, dims, {r["trial"] for r in (summary.get("stuck") or {}).get("search", [])}
        ),
        key=lambda r: -(r["val_acc"] if isinstance(r["val_acc"], float) else -1.0),
    )
    head = ["number", "state", "val_acc", "stuck", "epochs", "time_s"] + [d.name for d in dims]
    return (
        "<table><tr>"
        + "".join(f"<th>{esc(h)}</th>" for h in head)
        + "</tr>"
        + "".join(
            "<tr>" + "".join(f"<td>{esc(_val(r.get(h), h))}</td>" for h in head) + "</tr>"
            for r in rows
        )
        + "</table>"
    )


def _lead(summary: dict[str, Any]) -> list[str]:
    """The report's first lines: the verdict and the config to use, then the stuck runs."""
    esc = html.escape
    verdict = summary.get("verdict")
    if verdict is not None:
        use = verdict["use"]
        parts = [f"<p class='verdict'><b>Verdict: {esc(verdict['text'])}</b></p>",
                 f"<p><b>Use <a href='{use}'>{use}</a></b>"
                 + ("" if use == "best.yaml" else " (CE alone; best.yaml holds the search's "
                    "choice, not shown to help)") + ".</p>"]  # fmt: skip
    elif summary.get("best") is not None:
        parts = ["<p class='verdict'><b>No confirmation against CE alone: best.yaml is the "
                 "search's choice, not shown to help; ce.yaml trains CE alone.</b></p>"]  # fmt: skip
    else:
        parts = []
    stuck = (summary.get("stuck") or {}).get("search") or []
    parts += [f"<p><b>stuck: {esc(search_stuck_text(r))}</b> (left out of the noise)</p>"
              for r in stuck]  # fmt: skip
    return parts


def _val(value: Any, key: str = "") -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.2f}%" if key == "val_acc" else f"{value:.4g}"
    return str(value)
