"""``chanloss compare``: every config for every seed, then a table and accuracy curves.

Runs live in ``OUT/<label>/seed<S>``. Finished runs are skipped and interrupted ones resumed,
so a comparison can be stopped and started again. Each run directory is locked while it is
checked and trained (:class:`~chanloss.training.run_dir.RunDir`), so two comparisons into the
same ``OUT`` never train the same run twice at once: the second one stops with a one-line error
naming the first. The number a run contributes is its final
epoch's test accuracy.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chanloss.training.config import (
    ConfigError,
    TrainConfig,
    config_to_dict,
    read_yaml,
    resolved_config_dict,
    validate_config,
)
from chanloss.training.run_dir import RunDir
from chanloss.training.trainer import train

# Keys that may differ between a stored run and the config without changing what it trains.
_IGNORED_KEYS = ("device", "workers", "tensorboard", "eval_batch_size", "epochs")


@dataclass
class ConfigResult:
    """The runs of one config: final test accuracies over seeds and mean time."""

    label: str
    config: TrainConfig
    seeds: list[int]
    test_acc: list[float]
    train_time_s: list[float]
    params: int
    run_dirs: list[Path]

    @property
    def mean(self) -> float:
        return sum(self.test_acc) / len(self.test_acc)

    @property
    def std(self) -> float:
        """Sample standard deviation (0 for a single seed)."""
        n = len(self.test_acc)
        if n < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((a - m) ** 2 for a in self.test_acc) / (n - 1))


def compare(
    configs: list[tuple[str, TrainConfig]],
    *,
    seeds: int,
    out_dir: str | Path,
    verbose: int = 1,
) -> list[ConfigResult]:
    """Train each ``(label, config)`` for ``seeds`` seeds (``config.seed + i``) and report.

    Writes ``results.md``, ``results.csv`` and ``test_accuracy.png`` in ``out_dir``.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    labels = [label for label, _ in configs]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise ConfigError(f"two configs have the same name {duplicates[0]!r}; rename one file")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = len(configs) * seeds
    results: list[ConfigResult] = []
    done = 0
    for label, base in configs:
        result = ConfigResult(label, base, [], [], [], 0, [])
        for i in range(seeds):
            config = base.model_copy(update={"seed": base.seed + i})
            config = validate_config(config_to_dict(config))
            run_dir = out_dir / label / f"seed{config.seed}"
            start = time.perf_counter()
            with RunDir(run_dir) as run:
                status = _run_status(run_dir, config)
                if status == "done":
                    summary = json.loads((run_dir / "summary.json").read_text())
                else:
                    summary = train(config, run, resume=status == "resume", verbose=min(verbose, 1))
            done += 1
            acc = summary["final_test_acc"]
            result.seeds.append(config.seed)
            result.test_acc.append(acc)
            result.train_time_s.append(summary["train_time_s"])
            result.params = summary["params"]
            result.run_dirs.append(run_dir)
            if verbose:
                how = (
                    "finished earlier"
                    if status == "done"
                    else f"{time.perf_counter() - start:.1f} s"
                )
                print(
                    f"[{done}/{total}] {label} seed {config.seed}: test {100 * acc:.2f}% ({how})",
                    flush=True,
                )
        results.append(result)
    write_results(results, out_dir, seeds=seeds)
    return results


def load_labelled(paths: list[str], overrides: list[str]) -> list[tuple[str, TrainConfig]]:
    """Load config files with ``--set`` overrides; the label of a config is its file stem."""
    from chanloss.training.config import load_config

    return [(Path(p).stem, load_config(p, overrides)) for p in paths]


def _run_status(run_dir: Path, config: TrainConfig) -> str:
    """``new``, ``resume`` (interrupted, or ``epochs`` raised) or ``done``."""
    if not (run_dir / "last.pt").exists():
        return "new"
    stored_path = run_dir / "config.yaml"
    stored = resolved_config_dict(read_yaml(stored_path)) if stored_path.exists() else None
    current = config_to_dict(config)
    if not isinstance(stored, dict) or _strip(stored) != _strip(current):
        raise ConfigError(
            f"{run_dir} holds a run of a different config; use another --out or delete it"
        )
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("finished") and summary.get("epochs") == config.epochs:
            return "done"
        if summary.get("epochs", 0) > config.epochs:
            raise ConfigError(
                f"{run_dir} was trained for {summary['epochs']} epochs, more than the "
                f"{config.epochs} asked for; use another --out"
            )
    return "resume"


def _strip(raw: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in raw.items() if k not in _IGNORED_KEYS}
    if isinstance(out.get("data"), dict):
        out["data"] = {**out["data"], "root": None}
    return out


def results_table(results: list[ConfigResult]) -> str:
    """The Markdown table of final test accuracy (mean +- std over seeds) per config."""
    lines = [
        "| config | model | losses | test acc (%) | seeds | time / run (s) | params |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        losses = " + ".join(
            loss.name if loss.weight == 1.0 else f"{loss.weight:g}*{loss.name}"
            for loss in r.config.losses
        )
        time_s = sum(r.train_time_s) / len(r.train_time_s)
        lines.append(
            f"| {r.label} | {r.config.model.name} | {losses} | "
            f"{100 * r.mean:.2f} ± {100 * r.std:.2f} | {len(r.seeds)} | {time_s:.1f} | "
            f"{r.params:,} |"
        )
    return "\n".join(lines)


def write_results(results: list[ConfigResult], out_dir: Path, *, seeds: int) -> None:
    """``results.md``, ``results.csv`` and ``test_accuracy.png``."""
    dataset = ", ".join(sorted({r.config.data.name for r in results}))
    (out_dir / "results.md").write_text(
        f"# Final test accuracy ({dataset}; mean ± sample std over {seeds} seed"
        f"{'s' if seeds > 1 else ''})\n\n{results_table(results)}\n"
    )
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "config",
                "model",
                "losses",
                "seeds",
                "test_acc_mean",
                "test_acc_std",
                "test_accs",
                "train_time_mean_s",
                "params",
            ]
        )
        for r in results:
            w.writerow(
                [
                    r.label,
                    r.config.model.name,
                    "+".join(loss.name for loss in r.config.losses),
                    len(r.seeds),
                    f"{r.mean:.6f}",
                    f"{r.std:.6f}",
                    ";".join(f"{a:.6f}" for a in r.test_acc),
                    f"{sum(r.train_time_s) / len(r.train_time_s):.2f}",
                    r.params,
                ]
            )
    plot_curves(results, out_dir / "test_accuracy.png")


def _curve(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return {
            int(row["epoch"]): float(row["test_acc"])
            for row in csv.DictReader(f)
            if row["test_acc"]
        }


def plot_curves(results: list[ConfigResult], path: Path) -> None:
    """Test accuracy against epoch, mean over seeds per config (epochs every seed evaluated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        curves = [_curve(d) for d in r.run_dirs]
        epochs = sorted(set.intersection(*(set(c) for c in curves)))
        means = [100 * sum(c[e] for c in curves) / len(curves) for e in epochs]
        ax.plot(epochs, means, marker="o", markersize=3, label=f"{r.label} ({100 * r.mean:.2f}%)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Test accuracy, mean over {len(results[0].seeds) if results else 0} seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
