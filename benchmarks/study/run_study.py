"""Run a part of the accuracy study (resumable): ``python benchmarks/study/run_study.py --part NAME``.

    python benchmarks/study/run_study.py --list                      # the parts and their cost
    python benchmarks/study/run_study.py --part sweep-digits         # CC/MC hyper-parameters
    python benchmarks/study/run_study.py --part digits [--seeds 3]   # every loss, chosen CC/MC
    python benchmarks/study/run_study.py --part sweep-digits --part digits
    python benchmarks/study/run_study.py --part digits --dry-run     # validate the configs only
    python benchmarks/study/run_study.py --part tuned-digits          # every loss tuned (chanloss tune)

The protocol (data sets, recipes, grids, selection on validation) is in ``parts.py``. Runs live
in ``runs/study/<part>/<label>/seed<S>`` (one ``chanloss`` run directory each: config.yaml,
metrics.csv, summary.json, checkpoints). A finished run is skipped, an interrupted one resumed
from its ``last.pt``; a run directory that holds another config is an error (delete it).
A run that diverges is recorded as such (``diverged.json``) and left out of the mean.

Results (rewritten after every run, so a partial study can be reported):

- ``benchmarks/results/study_<part>.csv``: study parts: final test accuracy per loss, mean +-
  sample std over seeds; sweep parts: final VALIDATION accuracy per grid point (no test column);
- ``benchmarks/results/study_<part>.json``: the machine, commit, wall time, and for sweeps the
  chosen values that the study part of the same data set reads;
- ``benchmarks/results/study_<part>_curves.png``: accuracy and training loss per epoch, mean over
  seeds, from the runs' metrics.csv.

``--quick`` (2 epochs, 1 seed, runs/study-quick, benchmarks/results/quick) is a smoke run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _common as common  # noqa: E402
import parts as P  # noqa: E402

STUDY_COLUMNS = [
    "part", "dataset", "model", "label", "losses", "params", "seeds", "finished_seeds",
    "diverged_seeds", "test_acc_mean", "test_acc_std", "test_accs", "train_time_mean_s", "epochs",
]  # fmt: skip
SWEEP_COLUMNS = [
    "part", "dataset", "loss", "label", "params", "seeds", "finished_seeds", "diverged_seeds",
    "val_acc_mean", "val_acc_std", "val_accs", "chosen", "epochs", "val_fraction",
]  # fmt: skip
_IGNORED_KEYS = ("device", "workers", "tensorboard", "eval_batch_size")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part",
        dest="parts",
        action="append",
        choices=list(P.PARTS),
        help="part to run (repeatable, run in the order given)",
    )
    parser.add_argument("--list", action="store_true", help="list the parts and exit")
    parser.add_argument("--seeds", type=common.positive_int, default=None, help="seeds per config")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None, help="labels subset")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=common.positive_int, default=None, help="torch threads")
    parser.add_argument("--epochs", type=common.positive_int, default=None, help="override epochs")
    parser.add_argument(
        "--trials", type=common.positive_int, default=None, help="tuned parts: trials per loss"
    )
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed, separate dirs")
    parser.add_argument("--dry-run", action="store_true", help="validate the configs and exit")
    parser.add_argument("--runs", type=Path, default=None, help="run root (default runs/study)")
    parser.add_argument(
        "--results", type=Path, default=None, help="results dir (default benchmarks/results)"
    )
    return parser


# -- files ---------------------------------------------------------------------------------------
def write_text(path: Path, text: str) -> None:
    """Atomic write (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    write_text(path, buf.getvalue())


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=False)
    if isinstance(value, list):
        return ";".join(f"{v:.6f}" if isinstance(v, float) else str(v) for v in value)
    return "" if value is None else value


def _strip(raw: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in raw.items() if k not in _IGNORED_KEYS}
    if isinstance(out.get("data"), dict):
        out["data"] = {**out["data"], "root": None}
    return out


def _non_finite_error() -> tuple[type[BaseException], ...]:
    try:
        from chanloss.run.trainer import NonFiniteLossError
    except ImportError:  # older trainers raise a ConfigError saying "diverged"
        return ()
    return (NonFiniteLossError,)


_NON_FINITE = _non_finite_error()


# -- one run -------------------------------------------------------------------------------------
def run_status(run_dir: Path, config_dict: dict[str, Any]) -> str:
    """``new``, ``resume``, ``done`` or ``diverged``; another config in ``run_dir`` is an error."""
    from chanloss.config import resolved_config_dict, yaml_load

    stored_path = run_dir / "config.yaml"
    if not stored_path.exists():
        return "new"
    stored = resolved_config_dict(yaml_load(stored_path.read_text()))
    if not isinstance(stored, dict) or _strip(stored) != _strip(config_dict):
        raise SystemExit(
            f"{run_dir} holds a run of a different config (the study protocol changed?); "
            "delete that directory or use another --runs"
        )
    if (run_dir / "diverged.json").exists():
        return "diverged"
    if not (run_dir / "last.pt").exists():
        return "new"
    summary_path = run_dir / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("finished") and summary.get("epochs") == config_dict["epochs"]:
            return "done"
    return "resume"


def _add_wall_time(run_dir: Path, seconds: float) -> None:
    """Accumulate a run's wall-clock time (data, model building, training, evaluation) over
    the invocations that worked on it, in ``run_dir/study_wall_time.json``."""
    if not run_dir.exists():
        return
    path = run_dir / "study_wall_time.json"
    before = json.loads(path.read_text())["wall_s"] if path.exists() else 0.0
    common.write_json(path, {"wall_s": round(before + seconds, 3)})


def wall_time(run_dir: Path) -> float:
    """The accumulated wall-clock seconds of a run (0 when unknown)."""
    path = run_dir / "study_wall_time.json"
    return json.loads(path.read_text())["wall_s"] if path.exists() else 0.0


def final_metrics(run_dir: Path) -> dict[str, Any]:
    """The last epoch's row of metrics.csv (floats; empty cells are None) and the summary."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((run_dir / "summary.json").read_text())
    last = {k: (float(v) if v not in ("", None) else None) for k, v in rows[-1].items()}
    return {"last": last, "summary": summary}


def train_one(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train (or skip / resume) one run; ``{"status", "val_acc", "test_acc", "time_s"}``."""
    from chanloss.config import ConfigError, config_to_dict, load_config
    from chanloss.run.session import train

    config = load_config(raw=raw)
    config_dict = config_to_dict(config)
    status = run_status(run_dir, config_dict)
    if status in ("new", "resume"):
        start = time.perf_counter()
        try:
            train(config, run_dir, resume=status == "resume", verbose=0)
        except ConfigError as err:
            if not isinstance(err, _NON_FINITE) and "diverged" not in str(err):
                raise
            common.write_json(run_dir / "diverged.json", {"error": str(err)})
            status = "diverged"
        else:
            status = "trained"
        finally:
            _add_wall_time(run_dir, time.perf_counter() - start)
    if status == "diverged":
        return {"status": status, "val_acc": None, "test_acc": None, "time_s": None}
    got = final_metrics(run_dir)
    return {
        "status": status,
        "val_acc": got["last"].get("val_acc"),
        "test_acc": got["summary"]["final_test_acc"],
        "time_s": got["summary"]["train_time_s"],
    }


# -- curves --------------------------------------------------------------------------------------
def _curve(run_dir: Path, column: str) -> dict[int, float]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {int(r["epoch"]): float(r[column]) for r in csv.DictReader(f) if r.get(column)}


def zoom_limits(lines: list[tuple[list[float], list[float]]], x_from: float) -> tuple[float, float]:
    """The y range of the zoom panel: from the 10th percentile of the lines' lowest values at
    ``x >= x_from`` (so that one or two diverged runs do not stretch it) to the highest value,
    with half a point of margin; at most 100."""
    import numpy as np

    lows = [min(y for x, y in zip(xs, ys, strict=True) if x >= x_from) for xs, ys in lines]
    highs = [max(y for x, y in zip(xs, ys, strict=True) if x >= x_from) for xs, ys in lines]
    low = float(np.percentile(lows, 10)) if len(lows) > 2 else min(lows)
    return low - 0.5, min(100.0, max(highs) + 0.5)


def curves_figure(groups: dict[str, list[Path]], acc_column: str, title: str) -> Any:
    """Accuracy (``acc_column``; all epochs, and the last third zoomed) and training objective
    per epoch, mean over each group's runs; every panel titled and labelled, the legend below
    the panels inside the figure. ``{accuracy}`` in ``title`` names the accuracy shown."""
    runs = [d for run_dirs in groups.values() for d in run_dirs]
    if runs and all(len(_curve(d, acc_column)) <= 1 for d in runs):
        # runs trained since the test split is read only after the last epoch: the training
        # accuracy shows the course instead (labelled so)
        acc_column = "train_acc"
    plt = common.pyplot()
    fig, (ax_acc, ax_zoom, ax_loss) = plt.subplots(1, 3, figsize=(15, 5.4))
    colours = plt.get_cmap("tab20").colors
    last_epoch = 0
    acc_name = acc_column.replace("_acc", "").replace("_", " ")
    for i, (label, run_dirs) in enumerate(groups.items()):
        main = label.split(" ")[0] in ("ce", "cc", "mc")
        style = {
            "color": colours[(2 * i) % 20 + (i // 10) % 2],
            "linewidth": 2.2 if main else 1.1,
            "linestyle": "-" if main else "--",
        }
        for column, scale in ((acc_column, 100.0), ("train_loss", 1.0)):
            curves = [c for c in (_curve(d, column) for d in run_dirs) if c]
            if not curves:
                continue
            epochs = sorted(set.intersection(*(set(c) for c in curves)))
            means = [scale * sum(c[e] for c in curves) / len(curves) for e in epochs]
            axes = (ax_acc, ax_zoom) if column == acc_column else (ax_loss,)
            for ax in axes:
                ax.plot(epochs, means, label=label, **style)
            last_epoch = max(last_epoch, epochs[-1] if epochs else 0)
    start = max(1, round(2 * last_epoch / 3))
    if last_epoch >= 3:
        ax_zoom.set_xlim(start, last_epoch)
        lines = [
            (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax_zoom.get_lines()
            if any(x >= start for x in line.get_xdata())
        ]
        if lines:
            ax_zoom.set_ylim(*zoom_limits(lines, start))
    ax_acc.set_title(f"(a) {acc_name} accuracy, all epochs", fontsize=9)
    ax_zoom.set_title("(b) the last third, zoomed (a diverged run may fall below)", fontsize=9)
    ax_loss.set_title("(c) training objective (symlog scale)", fontsize=9)
    for ax in (ax_acc, ax_zoom):
        ax.set_ylabel(f"{acc_name} accuracy (%)")
    ax_loss.set_ylabel("training objective")
    ax_loss.set_yscale("symlog", linthresh=1e-2)
    for ax in (ax_acc, ax_zoom, ax_loss):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    handles, names = ax_acc.get_legend_handles_labels()
    rows = max(1, math.ceil(len(names) / 7))
    if names:
        fig.legend(
            handles, names, loc="lower center", ncol=min(7, len(names)), fontsize=8, frameon=False
        )
    fig.suptitle(title.replace("{accuracy}", f"{acc_name} accuracy"), fontsize=10)
    fig.tight_layout(rect=(0, 0.05 * rows + 0.02, 1, 1))
    return fig


def plot_curves(groups: dict[str, list[Path]], acc_column: str, title: str, path: Path) -> None:
    """Write :func:`curves_figure` to ``path``."""
    fig = curves_figure(groups, acc_column, title)
    common.save_figure(fig, path)
    common.pyplot().close(fig)


# -- parts ---------------------------------------------------------------------------------------
class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        root = common.REPO_ROOT
        self.runs = args.runs or root / ("runs/study-quick" if args.quick else "runs/study")
        self.results = args.results or (common.QUICK_DIR if args.quick else common.RESULTS_DIR)

    def prepare(self, raw: dict[str, Any], seed: int) -> dict[str, Any]:
        raw = json.loads(json.dumps(raw))
        raw["seed"] = seed
        raw["device"] = self.args.device
        if self.args.quick:
            raw["epochs"] = 2
        if self.args.epochs is not None:
            raw["epochs"] = self.args.epochs
        return raw

    def device(self) -> str:
        """The device the runs use (``auto`` resolved as the trainer does)."""
        import torch

        if self.args.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.args.device

    def seeds(self, part: P.Part) -> list[int]:
        n = self.args.seeds or (1 if self.args.quick else part.seeds)
        return list(range(n))

    def meta(self, part: P.Part, start: float, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "part": part.name,
            "kind": part.kind,
            "dataset": part.dataset,
            "column": part.column,
            "recipe": P.recipe(part),
            "epochs": self.args.epochs or (2 if self.args.quick else P.recipe(part)["epochs"]),
            "seeds": len(self.seeds(part)),
            "quick": self.args.quick,
            "machine": common.machine_info(self.device()),
            "device_setting": self.args.device,
            "wall_time_s": round(time.perf_counter() - start, 1),
            "command": " ".join(["python", "benchmarks/study/run_study.py", *sys.argv[1:]]),
            **extra,
        }

    def complete(self, part: P.Part, items: list[dict[str, Any]], rows: list[dict]) -> bool:
        """Every config of the part has a row with every seed (never with ``--only``)."""
        seeds = len(self.seeds(part))
        whole = len(rows) == len(items) and all(r["seeds"] == seeds for r in rows)
        return whole and not self.args.only

    def chosen(self, part: P.Part) -> dict[str, dict[str, Any]]:
        path = self.results / f"study_{part.sweep_part}.json"
        if not path.exists():
            raise SystemExit(
                f"part {part.name!r} uses the values chosen by {part.sweep_part!r}, but {path} "
                f"does not exist; run: python benchmarks/study/run_study.py --part "
                f"{part.sweep_part}{' --quick' if self.args.quick else ''}"
            )
        data = json.loads(path.read_text())
        if not data.get("complete"):
            raise SystemExit(f"{path}: the sweep {part.sweep_part!r} is not complete; run it again")
        return data["chosen"]

    def run_part(self, part: P.Part) -> None:
        start = time.perf_counter()
        if part.kind == "sweep":
            self.run_sweep(part, start)
        elif part.kind == "tuned":
            self.run_tuned(part, start)
        else:
            self.run_study(part, start)

    def run_tuned(self, part: P.Part, start: float) -> None:
        """Tune every loss with ``chanloss tune`` (same budget, validation only), then train the
        chosen settings on the full training split over the seeds like a study part."""
        from chanloss.config import load_config, yaml_load
        from chanloss.tuning import tune

        trials = 2 if self.args.quick else (self.args.trials or part.trials)
        best: dict[str, dict[str, Any]] = {}
        searches: dict[str, Any] = {}
        for item in P.tuned_search_configs(part, self.args.only):
            out = self.runs / part.name / item["label"] / "tune"
            t0 = time.perf_counter()
            summary = tune(
                load_config(raw=self.prepare(item["raw"], 0)),
                out,
                trials=trials,
                confirm_seeds=0,
                resume=(out / "study.db").exists(),
                log=common.log,
            )
            best[item["label"]] = yaml_load((out / "best.yaml").read_text())
            searches[item["label"]] = {
                "chosen": summary["best"]["params"],
                "val_acc": summary["best"]["val_acc"],
                "complete": summary["counts"]["COMPLETE"],
                "pruned": summary["counts"]["PRUNED"],
                "search_wall_s": round(time.perf_counter() - t0, 1),
            }
        items = P.tuned_study_configs(part, best)
        extra = {
            "tuned": {
                "trials": trials,
                "selection": "chanloss tune: TPE + median pruner, final-epoch validation "
                f"accuracy (val_fraction {P.SWEEP_VAL_FRACTION}); each loss's declared search "
                f"space plus optim.lr in {P.TUNE_LR_RANGE}; test never read",
                "searches": searches,
            }
        }
        self.run_study(part, start, items=items, extra=extra)

    def _loop(
        self,
        part: P.Part,
        items: list[dict[str, Any]],
        show: str,
        save: Callable[[dict[str, list]], None],
    ) -> dict[str, list]:
        """Train every item for every seed; ``{label: [result per seed]}``. Progress is printed
        and ``save`` rewrites the results after every item."""
        seeds = self.seeds(part)
        total = len(items) * len(seeds)
        done = 0
        outcome: dict[str, list] = {}
        for item in items:
            results = []
            for seed in seeds:
                run_dir = self.runs / part.name / item["label"] / f"seed{seed}"
                t0 = time.perf_counter()
                res = train_one(self.prepare(item["raw"], seed), run_dir)
                res["run_dir"] = run_dir
                results.append(res)
                done += 1
                acc = res[show]
                shown = "diverged" if acc is None else f"{show} {100 * acc:.2f}%"
                how = (
                    "finished earlier"
                    if res["status"] == "done"
                    else f"{time.perf_counter() - t0:.1f} s"
                )
                common.log(
                    f"[{part.name} {done}/{total}] {item['label']} seed {seed}: {shown} ({how})"
                )
            outcome[item["label"]] = results
            save(outcome)
        return outcome

    def run_sweep(self, part: P.Part, start: float) -> None:
        items = P.sweep_configs(part)
        if self.args.only:
            items = [
                i for i in items if i["loss"] in self.args.only or i["label"] in self.args.only
            ]
        epochs = self.prepare(items[0]["raw"], 0)["epochs"] if items else None

        def rows_of(outcome: dict[str, list]) -> list[dict[str, Any]]:
            rows = []
            for item in items:
                if item["label"] not in outcome:
                    continue
                res = outcome[item["label"]]
                accs = [r["val_acc"] for r in res if r["val_acc"] is not None]
                mean, std = P.mean_std(accs)
                rows.append(
                    {
                        "part": part.name,
                        "dataset": part.dataset,
                        "loss": item["loss"],
                        "label": item["label"],
                        "params": item["params"],
                        "seeds": len(res),
                        "finished_seeds": len(accs),
                        "diverged_seeds": sum(r["status"] == "diverged" for r in res),
                        "val_acc_mean": mean,
                        "val_acc_std": std,
                        "val_accs": accs,
                        "epochs": epochs,
                        "val_fraction": P.SWEEP_VAL_FRACTION,
                    }
                )
            return rows

        def save(outcome: dict[str, list]) -> None:
            rows = rows_of(outcome)
            chosen = P.choose(
                [{k: r[k] for k in ("loss", "params", "val_acc_mean", "val_acc_std")} for r in rows]
            )
            for r in rows:
                r["chosen"] = chosen.get(r["loss"]) == r["params"]
            write_csv(self.results / f"study_{part.name}.csv", SWEEP_COLUMNS, rows)
            meta = self.meta(
                part,
                start,
                {
                    "complete": self.complete(part, items, rows),
                    "selection": "highest mean final-epoch validation accuracy over seeds "
                    f"(val_fraction {P.SWEEP_VAL_FRACTION} of the training split); test never read",
                    "val_fraction": P.SWEEP_VAL_FRACTION,
                    "grids": part.grids,
                    "chosen": chosen,
                    "chosen_val_acc": {
                        r["loss"]: [r["val_acc_mean"], r["val_acc_std"]]
                        for r in rows
                        if r["chosen"]
                    },
                    "configs": len(items),
                    "run_time_sum_s": round(
                        sum(x["time_s"] or 0 for v in outcome.values() for x in v), 1
                    ),
                    "run_wall_time_sum_s": round(
                        sum(wall_time(x["run_dir"]) for v in outcome.values() for x in v), 1
                    ),
                },
            )
            common.write_json(self.results / f"study_{part.name}.json", meta)
            groups = {}
            for item in items:
                if item["label"] not in outcome:
                    continue
                is_default = item["params"] == P.grid(part.grids[item["loss"]])[0]
                if chosen.get(item["loss"]) == item["params"] or is_default:
                    tag = ("chosen " if chosen.get(item["loss"]) == item["params"] else "") + (
                        "default " if is_default else ""
                    )
                    name = f"{item['loss']} {tag.strip()}: {P.params_label(item['params'])}"
                    groups[name] = [r["run_dir"] for r in outcome[item["label"]]]
            plot_curves(
                groups,
                "val_acc",
                f"{part.name}: validation accuracy of the default and chosen CC/MC settings",
                self.results / f"study_{part.name}_curves.png",
            )

        outcome = self._loop(part, items, "val_acc", save)
        common.log(
            f"{part.name}: chosen {json.dumps(P.choose([{k: r[k] for k in ('loss', 'params', 'val_acc_mean', 'val_acc_std')} for r in rows_of(outcome)]))}"
            f"; {time.perf_counter() - start:.0f} s; results in {self.results}"
        )

    def run_study(
        self,
        part: P.Part,
        start: float,
        items: list[dict[str, Any]] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        only = self.args.only
        chosen: dict[str, Any] = {}
        if items is None:
            wanted = only if only is not None else part.losses  # None: every loss
            needs_sweep = wanted is None or any(name in wanted for name in P.TUNED)
            chosen = self.chosen(part) if needs_sweep else {}
            items = P.study_configs(part, chosen, only)
        epochs = self.prepare(items[0]["raw"], 0)["epochs"] if items else None

        def save(outcome: dict[str, list]) -> None:
            rows = []
            for item in items:
                if item["label"] not in outcome:
                    continue
                res = outcome[item["label"]]
                accs = [r["test_acc"] for r in res if r["test_acc"] is not None]
                times = [r["time_s"] for r in res if r["time_s"] is not None]
                mean, std = P.mean_std(accs)
                rows.append(
                    {
                        "part": part.name,
                        "dataset": part.dataset,
                        "model": item["raw"]["model"]["name"],
                        "label": item["label"],
                        "losses": "+".join(e["name"] for e in item["raw"]["losses"]),
                        "params": item["params"],
                        "seeds": len(res),
                        "finished_seeds": len(accs),
                        "diverged_seeds": sum(r["status"] == "diverged" for r in res),
                        "test_acc_mean": mean,
                        "test_acc_std": std,
                        "test_accs": accs,
                        "train_time_mean_s": sum(times) / len(times) if times else math.nan,
                        "epochs": epochs,
                    }
                )
            write_csv(self.results / f"study_{part.name}.csv", STUDY_COLUMNS, rows)
            meta = self.meta(
                part,
                start,
                {
                    "complete": self.complete(part, items, rows),
                    "chosen_from": part.sweep_part if part.kind == "study" else part.name,
                    "chosen": chosen,
                    **(extra or {}),
                    "losses": {i["label"]: i["raw"]["losses"] for i in items},
                    "run_time_sum_s": round(
                        sum(x["time_s"] or 0 for v in outcome.values() for x in v), 1
                    ),
                    "run_wall_time_sum_s": round(
                        sum(wall_time(x["run_dir"]) for v in outcome.values() for x in v), 1
                    ),
                },
            )
            common.write_json(self.results / f"study_{part.name}.json", meta)
            plot_curves(
                {label: [r["run_dir"] for r in res] for label, res in outcome.items()},
                "test_acc",
                f"{part.name}: {{accuracy}} and training objective, mean over "
                f"{len(self.seeds(part))} seed(s)",
                self.results / f"study_{part.name}_curves.png",
            )

        self._loop(part, items, "test_acc", save)
        common.log(f"{part.name}: {time.perf_counter() - start:.0f} s; results in {self.results}")


def dry_run(runner: Runner, part: P.Part) -> None:
    from chanloss.config import load_config

    if part.kind == "sweep":
        items = P.sweep_configs(part)
    elif part.kind == "tuned":
        items = P.tuned_search_configs(part, runner.args.only)
    else:
        chosen = {name: P.grid(P.SWEEP_GRIDS[name])[0] for name in P.TUNED}
        try:
            chosen = runner.chosen(part)
        except SystemExit as err:
            common.log(f"({err}; showing the sweep defaults)")
        items = P.study_configs(part, chosen, runner.args.only)
    for item in items:
        config = load_config(raw=runner.prepare(item["raw"], 0))
        shown = []
        for e in config.losses:
            params = {**({"weight": e.weight} if e.weight != 1.0 else {}), **e.params()}
            shown.append(f"{e.name}({P.params_label(params)})" if params else e.name)
        losses = " + ".join(shown)
        common.log(
            f"{part.name}: {item['label']}: {config.model.name} on {config.data.name}, {losses}"
        )
    common.log(f"{part.name}: {len(items)} configs x {len(runner.seeds(part))} seeds")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list or not args.parts:
        for part in P.PARTS.values():
            model = (part.model or P.BASES[part.dataset]["model"])["name"]
            common.log(
                f"{part.name:<22} {part.kind:<6} {part.dataset:<12} {model:<14} {part.estimate}"
            )
        if not args.list:
            common.log("choose one with --part NAME")
        return 0 if args.list else 2
    common.import_all_losses()
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    runner = Runner(args)
    for name in args.parts:
        part = P.PARTS[name]
        if args.dry_run:
            dry_run(runner, part)
        else:
            runner.run_part(part)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
