"""``chanloss compare``: every config for every seed, then a table and accuracy curves.

Runs live in ``OUT/<label>/seed<S>``. Finished runs are skipped and interrupted ones resumed,
so a comparison can be stopped and started again. Each run directory is locked while it is
checked and trained (:class:`~chanloss.run.run_dir.RunDir`), so two comparisons into the
same ``OUT`` never train the same run twice at once: the second one stops with a one-line error
naming the first. The number a run contributes is its final epoch's test accuracy; the table shows the final validation accuracy beside it (choose settings
on validation, not on test). While runs train, a plain line per finished epoch reports the run,
its accuracy and the progress of the whole comparison with an estimate of the time left.
``jobs`` runs that many trainings side by side, each in its own process with a share of the
CPU threads.
"""

from __future__ import annotations

import csv
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from chanloss.config import (
    ConfigError,
    TrainConfig,
    config_to_dict,
    validate_config,
)
from chanloss.core.text import clock, pct
from chanloss.experiments.results import ConfigResult
from chanloss.experiments.runner import KeepDiverged, run_many, run_status, train_locked
from chanloss.experiments.verdict import compare_verdict
from chanloss.run.result import RunResult, metrics_rows, read_result

_train_locked = train_locked  # what compare trains a run with (a test replaces it)
_metrics_rows = metrics_rows


@dataclass
class _Run:
    label: str
    config: TrainConfig
    run_dir: Path
    status: str  # new, resume or done


def compare(
    configs: list[tuple[str, TrainConfig]],
    *,
    seeds: int,
    out_dir: str | Path,
    verbose: int = 1,
    jobs: int = 1,
    stream: TextIO | None = None,
    keep_diverged: bool = False,
) -> list[ConfigResult]:
    """Train each ``(label, config)`` for ``seeds`` seeds (``config.seed + i``) and report.

    ``jobs`` trainings run at a time (``jobs > 1``: in the worker processes of
    :mod:`chanloss.experiments.pool`, each with ``cores // jobs`` torch threads). With
    ``verbose``, a line per finished epoch and per finished run goes to ``stream`` (default
    stdout). Writes ``results.md``, ``results.csv``
    and ``accuracy.png`` in ``out_dir``. With ``keep_diverged`` a run whose training diverges
    does not stop the comparison: it is recorded (``diverged.json`` in its run directory, not
    trained again), listed in :attr:`ConfigResult.diverged` and left out of the means.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    labels = [label for label, _ in configs]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise ConfigError(f"two configs have the same name {duplicates[0]!r}; rename one file")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan: list[_Run] = []
    for label, base in configs:
        for i in range(seeds):
            config = validate_config(
                config_to_dict(base.model_copy(update={"seed": base.seed + i}))
            )
            run_dir = out_dir / label / f"seed{config.seed}"
            plan.append(_Run(label, config, run_dir, run_status(run_dir, config)))
    progress = _Progress(plan, stream or sys.stdout) if verbose else None
    summaries: dict[Path, RunResult] = {}
    try:
        if progress is not None:
            progress.start()
        todo = []
        for run in plan:
            if run.status == "done":
                summaries[run.run_dir] = read_result(run.run_dir)
                if progress is not None:
                    progress.finished(run, summaries[run.run_dir], earlier=True)
            else:
                todo.append(run)

        def finished(index: int, result: RunResult) -> None:
            summaries[todo[index].run_dir] = result
            if progress is not None:
                progress.finished(todo[index], result)

        run_many(
            [(run.config, run.run_dir) for run in todo],
            jobs=jobs,
            on_finished=finished,
            worker=KeepDiverged(_train_locked) if keep_diverged else _train_locked,
        )
    finally:
        if progress is not None:
            progress.stop()
    results = [_collect(label, base, plan, summaries) for label, base in configs]
    write_results(results, out_dir, seeds=seeds)
    return results


def _collect(
    label: str, base: TrainConfig, plan: list[_Run], summaries: dict[Path, RunResult]
) -> ConfigResult:
    """The :class:`ConfigResult` of one config from its runs' results."""
    result = ConfigResult(label, base, [], [], [], 0, [])
    for run in (r for r in plan if r.label == label):
        summary = summaries[run.run_dir]
        if "diverged" in summary:
            result.diverged.append(run.config.seed)
            continue
        result.seeds.append(run.config.seed)
        result.test_acc.append(summary["final_test_acc"])
        result.train_time_s.append(summary["train_time_s"])
        result.params = summary["params"]
        result.run_dirs.append(run.run_dir)
        val = summary.final_val_acc
        if val is not None:
            result.val_acc.append(val)
    return result


class _Progress:
    """Prints a plain line per finished epoch of every run, with the progress of the whole
    comparison and the time left (from the epochs trained so far in this invocation).

    A thread reads each running run's ``metrics.csv`` (written atomically after every epoch),
    so it works the same for runs in this process and in worker processes.
    """

    def __init__(self, plan: list[_Run], stream: TextIO, every: float = 0.5) -> None:
        self.plan = plan
        self.stream = stream
        self.every = every
        self.total = sum(run.config.epochs for run in plan)
        self.seen = {run.run_dir: len(_metrics_rows(run.run_dir)) for run in plan}
        self.done_before = self._epochs_done()
        self.runs_done = 0
        self.start_time = time.perf_counter()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _epochs_done(self) -> int:
        return sum(min(self.seen[r.run_dir], r.config.epochs) for r in self.plan)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.poll()

    def poll(self) -> None:
        """Print the epochs finished since the last poll."""
        with self.lock:
            for run in self.plan:
                if run.status == "done":
                    continue
                rows = _metrics_rows(run.run_dir)
                for number, row in enumerate(rows, start=1):
                    if number > self.seen[run.run_dir]:
                        self.seen[run.run_dir] = number
                        self._print(self._epoch_line(run, row))

    def finished(self, run: _Run, summary: RunResult, *, earlier: bool = False) -> None:
        """Print the line of a finished run (after its last epoch lines)."""
        self.poll()
        with self.lock:
            self.runs_done += 1
            self.seen[run.run_dir] = max(self.seen[run.run_dir], run.config.epochs)
            head = f"[{self.runs_done}/{len(self.plan)}] {run.label} seed {run.config.seed}"
            if "diverged" in summary:
                self._print(f"{head}: diverged, left out ({summary['diverged']})")
                return
            how = "finished earlier" if earlier else f"{summary['train_time_s']:.1f} s"
            val = summary.final_val_acc
            val_text = f"val {100 * val:.2f}%, " if val is not None else ""
            self._print(f"{head}: {val_text}test {100 * summary['final_test_acc']:.2f}% ({how})")

    def _epoch_line(self, run: _Run, row: dict[str, str]) -> str:
        parts = [f"{run.label} seed {run.config.seed} epoch {row['epoch']}/{run.config.epochs}"]
        for key, name in (("train_acc", "train"), ("val_acc", "val")):
            if row.get(key):
                parts.append(f"{name} {100 * float(row[key]):.2f}%")
        return "  ".join(parts) + "  | " + self.overall()

    def overall(self) -> str:
        """``all runs: 12/90 epochs (13%), 0:41 elapsed, about 4:26 left``."""
        done = self._epochs_done()
        elapsed = time.perf_counter() - self.start_time
        text = f"all runs: {done}/{self.total} epochs ({100 * done / max(self.total, 1):.0f}%), "
        text += f"{clock(elapsed)} elapsed"
        trained = done - self.done_before
        if trained > 0 and done < self.total:
            text += f", about {clock(elapsed / trained * (self.total - done))} left"
        return text

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def load_labelled(paths: list[str], overrides: list[str]) -> list[tuple[str, TrainConfig]]:
    """Load config files with ``--set`` overrides; the label of a config is its file stem."""
    from chanloss.config import load_config

    return [(Path(p).stem, load_config(p, overrides)) for p in paths]


# Keys that never tell two configs apart in a table (they do not change what is trained, or
# are shown in their own column).
_NOT_SETTINGS = (
    "seed",
    "device",
    "workers",
    "tensorboard",
    "eval_batch_size",
    "test_every_epoch",
    "losses",
)


def differing_settings(configs: list[TrainConfig]) -> list[dict[str, Any]]:
    """Per config, the resolved settings (dotted keys) whose values differ between configs.

    Loss parameters are keyed by the loss's name (``mc.beta``; ``mc#2.beta`` for a second
    ``mc``). A key counts when at least two configs have it with different values; a key
    that only one config has (its extra loss) is not; the loss lists themselves are, as
    ``losses`` (``ce + mc``), when they differ (CE vs CE + MC-Loss).
    """
    flat = [{"losses": _loss_names(config), **_flatten(config)} for config in configs]
    keys = sorted({k for f in flat for k in f})
    differing = [
        k for k in keys if len({json.dumps(f[k], sort_keys=True) for f in flat if k in f}) > 1
    ]
    return [{k: f[k] for k in differing if k in f} for f in flat]


def _loss_names(config: TrainConfig) -> str:
    return " + ".join(loss.name for loss in config.losses)


def _flatten(config: TrainConfig) -> dict[str, Any]:
    raw = config_to_dict(config)
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", {k: v for k, v in raw.items() if k not in _NOT_SETTINGS})
    counts: dict[str, int] = {}
    for loss in raw["losses"]:
        counts[loss["name"]] = counts.get(loss["name"], 0) + 1
        name = (
            loss["name"] if counts[loss["name"]] == 1 else f"{loss['name']}#{counts[loss['name']]}"
        )
        for k, v in loss.items():
            if k != "name":
                out[f"{name}.{k}"] = v
    return out


def _fmt_setting(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt_setting(v) for v in value) + "]"
    return str(value)


def settings_text(settings: dict[str, Any]) -> str:
    """``mc.beta=5, optim.lr=0.1`` (``—`` when nothing differs)."""
    return ", ".join(f"{k}={_fmt_setting(v)}" for k, v in settings.items()) or "—"


def results_table(results: list[ConfigResult]) -> str:
    """The Markdown table: final validation and test accuracy (mean ± std over seeds) per
    config, with the settings that tell the configs apart."""
    lines = [
        "| config | model | losses | settings that differ | val acc (%) | test acc (%) "
        "| seeds | time / run (s) | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    settings = differing_settings([r.config for r in results])
    for r, differ in zip(results, settings, strict=True):
        losses = " + ".join(
            loss.name if loss.weight == 1.0 else f"{loss.weight:g}*{loss.name}"
            for loss in r.config.losses
        )
        time_s = sum(r.train_time_s) / max(len(r.train_time_s), 1)
        lines.append(
            f"| {r.label} | {r.config.model.name} | {losses} | {settings_text(differ)} | "
            f"{pct(r.val_mean, r.val_std, unit='', missing='—')} | {pct(r.mean, r.std, unit='', missing='—')} | {len(r.seeds)} | "
            f"{time_s:.1f} | {r.params:,} |"
        )
    return "\n".join(lines)


def write_results(results: list[ConfigResult], out_dir: Path, *, seeds: int) -> None:
    """``results.md``, ``results.csv`` and ``accuracy.png``."""
    dataset = ", ".join(sorted({r.config.data.name for r in results}))
    (out_dir / "results.md").write_text(
        f"# Final accuracy ({dataset}; mean ± sample std over {seeds} seed"
        f"{'s' if seeds > 1 else ''}; choose on validation, report test)\n\n"
        f"{results_table(results)}\n\n{compare_verdict(results)}\n"
    )
    settings = differing_settings([r.config for r in results])
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "config",
                "model",
                "losses",
                "settings",
                "seeds",
                "val_acc_mean",
                "val_acc_std",
                "test_acc_mean",
                "test_acc_std",
                "test_accs",
                "train_time_mean_s",
                "params",
            ]
        )
        for r, differ in zip(results, settings, strict=True):
            val = r.val_mean
            w.writerow(
                [
                    r.label,
                    r.config.model.name,
                    "+".join(loss.name for loss in r.config.losses),
                    settings_text(differ) if differ else "",
                    len(r.seeds),
                    "" if val is None else f"{val:.6f}",
                    "" if val is None else f"{r.val_std:.6f}",
                    f"{r.mean:.6f}",
                    f"{r.std:.6f}",
                    ";".join(f"{a:.6f}" for a in r.test_acc),
                    f"{sum(r.train_time_s) / max(len(r.train_time_s), 1):.2f}",
                    r.params,
                ]
            )
    plot_curves(results, out_dir / "accuracy.png")


def _curve(run_dir: Path, column: str) -> dict[int, float]:
    return {int(r["epoch"]): float(r[column]) for r in _metrics_rows(run_dir) if r.get(column)}


def curve_column(results: list[ConfigResult]) -> str:
    """What the curves show: validation accuracy when every run has it per epoch, else test
    accuracy when evaluated every epoch, else training accuracy."""
    for column in ("val_acc", "test_acc"):
        if all(len(_curve(d, column)) > 1 for r in results for d in r.run_dirs):
            return column
    return "train_acc"


def plot_curves(
    results: list[ConfigResult],
    path: Path,
    legend: Callable[[ConfigResult], str] | None = None,
) -> None:
    """Accuracy against epoch (see :func:`curve_column`), mean over seeds per config; each line
    labelled ``legend(result)`` (default: the label and the mean test accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column = curve_column(results)
    name = {"val_acc": "validation", "test_acc": "test", "train_acc": "training"}[column]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in (r for r in results if r.run_dirs):  # every run of a config may have diverged
        curves = [_curve(d, column) for d in r.run_dirs]
        epochs = sorted(set.intersection(*(set(c) for c in curves)))
        means = [100 * sum(c[e] for c in curves) / len(curves) for e in epochs]
        name = legend(r) if legend else f"{r.label} (test {100 * r.mean:.2f}%)"
        ax.plot(epochs, means, marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{name} accuracy (%)")
    ax.set_title(
        f"{name.capitalize()} accuracy, mean over {len(results[0].seeds) if results else 0} seeds"
    )
    ax.grid(alpha=0.3)
    if ax.get_lines():  # every run of every config may have diverged
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
