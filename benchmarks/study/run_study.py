"""Run a part of the accuracy study (resumable): ``python benchmarks/study/run_study.py --part NAME``.

    python benchmarks/study/run_study.py --list                      # the parts and their cost
    python benchmarks/study/run_study.py --part sweep-digits         # CC/MC hyper-parameters
    python benchmarks/study/run_study.py --part digits [--seeds 3]   # every loss, chosen CC/MC
    python benchmarks/study/run_study.py --part tuned-digits         # every loss tuned (chanloss tune)

The protocol is the settings file ``study.yaml``; this script loops over the package's
``compare`` (runs in ``runs/study/<part>/<label>/seed<S>``, finished runs skipped, diverged ones
recorded and left out of the mean); ``--jobs N`` trains N runs side by side. Results, rewritten
after every config: ``benchmarks/results/study_<part>.csv`` (test accuracy per loss, mean +-
std over seeds; sweeps: VALIDATION accuracy per grid point), ``study_<part>.json`` (machine,
commit, times; sweeps: the chosen values) and ``study_<part>_curves.png``. ``--quick`` (2
epochs, 1 seed, runs/study-quick, benchmarks/results/quick) is a smoke run.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import _common as common  # noqa: E402

from chanloss.core.atomic import write_json, write_text  # noqa: E402
from chanloss.run.builders import resolve_device  # noqa: E402

SETTINGS: dict[str, Any] = yaml.safe_load((HERE / "study.yaml").read_text())
VAL_FRACTION: float = SETTINGS["val_fraction"]
STUDY_COLUMNS = [
    "part", "dataset", "model", "label", "losses", "params", "seeds", "finished_seeds",
    "diverged_seeds", "test_acc_mean", "test_acc_std", "test_accs", "train_time_mean_s", "epochs",
]  # fmt: skip
SWEEP_COLUMNS = [
    "part", "dataset", "loss", "label", "params", "seeds", "finished_seeds", "diverged_seeds",
    "val_acc_mean", "val_acc_std", "val_accs", "chosen", "epochs", "val_fraction",
]  # fmt: skip


@dataclass(frozen=True)
class Part:
    """One part of ``study.yaml``: ``kind`` sweep, study or tuned; ``model`` replaces the
    recipe's; ``losses`` restricts the labels (``None``: every loss)."""

    name: str
    dataset: str
    kind: str
    seeds: int
    estimate: str
    grids: dict[str, dict[str, list[Any]]]
    model: dict[str, Any] | None = None
    losses: tuple[str, ...] | None = None
    trials: int = SETTINGS["tune"]["trials"]
    note: str = ""

    @property
    def sweep_part(self) -> str:
        """The sweep whose chosen values a study part uses (the data set's ConvNet sweep)."""
        return f"sweep-{self.dataset}"

    @property
    def column(self) -> str:
        """The part's column on the results page."""
        name = self.dataset if self.model is None else f"{self.dataset}, {self.model['name']}"
        name = f"{name}, {self.note}" if self.note else name
        return f"{name}, every loss tuned" if self.kind == "tuned" else name


def _part(name: str, spec: dict[str, Any]) -> Part:
    losses = spec.get("losses")
    losses = SETTINGS[losses] if isinstance(losses, str) else losses
    return Part(**{**spec, "name": name, "grids": SETTINGS["grids"][spec.get("grids", "full")],
                   "losses": tuple(losses) if losses else None})  # fmt: skip


PARTS = {name: _part(name, spec) for name, spec in SETTINGS["parts"].items()}


def params_label(params: dict[str, Any]) -> str:
    """``weight=0.1,reduction=4`` (for tables and run-directory names)."""
    return ",".join(f"{k}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in params.items())


def grid(spec: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of a grid, in order (the first is the all-defaults one)."""
    return [dict(zip(spec, values, strict=True)) for values in itertools.product(*spec.values())]


def recipe(part: Part, val_fraction: float | None = None) -> dict[str, Any]:
    """The part's training recipe (its model when it has one), with ``val_fraction``."""
    raw = copy.deepcopy(SETTINGS["recipes"][part.dataset])
    if part.model is not None:
        raw["model"] = copy.deepcopy(part.model)
    if val_fraction is not None:
        raw["data"]["val_fraction"] = val_fraction
    return raw


def sweep_configs(part: Part) -> list[dict[str, Any]]:
    """``{"label", "loss", "params", "raw"}`` per sweep point: CE + the loss with ``params``."""
    out = []
    for loss, spec in part.grids.items():
        for params in grid(spec):
            raw = recipe(part, VAL_FRACTION)
            fixed = SETTINGS["sweep_fixed"].get(loss, {})
            raw["losses"] = [{"name": "ce"}, {"name": loss, **fixed, **params}]
            label = f"{loss}_{params_label(params)}".replace("=", "-").replace(",", "_")
            out.append({"label": label, "loss": loss, "params": params, "raw": raw})
    return out


def study_configs(part: Part, chosen: dict[str, dict], labels: list[str] | None = None) -> list:
    """``{"label", "params", "raw"}`` per loss of a study part; CC/MC get ``chosen[...]``."""
    if part.losses is not None:
        labels = [name for name in (labels or part.losses) if name in part.losses]
    tuned = [n for n in SETTINGS["tuned"] if labels is None or n in labels]
    missing = [n for n in tuned if n not in chosen]
    if missing:
        raise ValueError(f"chosen values are missing for {missing}; got {sorted(chosen)}")
    out = []
    for label, losses in {**SETTINGS["losses"], **SETTINGS["current_defaults"]}.items():
        extra = label in SETTINGS["current_defaults"]
        if (labels is not None and label not in labels) or (extra and part.losses is None):
            continue
        raw, params = recipe(part, 0.0), dict(chosen.get(label, {}) if label in tuned else {})
        raw["losses"] = copy.deepcopy(losses)
        raw["losses"][-1].update(params)
        out.append({"label": label, "params": params, "raw": raw})
    return out


def tuned_search_configs(part: Part, labels: list[str] | None = None) -> list[dict[str, Any]]:
    """``{"label", "raw"}`` per loss of a "tuned" part: the recipe on the training split minus
    the validation split, with a ``search:`` block adding the learning rate to the loss's own
    declared space (so every loss, CE included, gets a search)."""
    out = []
    for label, losses in SETTINGS["losses"].items():
        if (labels and label not in labels) or (part.losses and label not in part.losses):
            continue
        raw = {**recipe(part, VAL_FRACTION), "losses": copy.deepcopy(losses),
               "search": {"optim": {"lr": list(SETTINGS["tune"]["lr"])}}}  # fmt: skip
        out.append({"label": label, "raw": raw})
    return out


def tuned_study_config(part: Part, label: str, best: dict[str, Any]) -> dict[str, Any]:
    """``{"label", "params", "raw"}`` of a tuned loss: the recipe on the full training split
    with the losses and optimiser of its ``best.yaml`` (``best``: that config)."""
    params = {"lr": best["optim"]["lr"]}
    for entry in best["losses"]:
        params.update({k: v for k, v in entry.items() if k != "name"})
    raw = {**recipe(part, 0.0), "losses": copy.deepcopy(best["losses"]),
           "optim": copy.deepcopy(best["optim"])}  # fmt: skip
    return {"label": label, "params": params, "raw": raw}


def choose(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per loss, the params of the row with the highest ``val_acc_mean`` (ties: lower
    ``val_acc_std``, then earlier row); a NaN mean (every seed diverged) is never chosen."""
    best: dict[str, tuple[tuple[float, float, int], dict[str, Any]]] = {}
    for i, row in enumerate(rows):
        if "test_acc_mean" in row or "test_accs" in row:
            raise ValueError("sweep rows must not carry test accuracy (selection is on validation)")
        if row["val_acc_mean"] is None or math.isnan(row["val_acc_mean"]):
            continue
        key = (-row["val_acc_mean"], row["val_acc_std"], i)
        if row["loss"] not in best or key < best[row["loss"]][0]:
            best[row["loss"]] = (key, dict(row["params"]))
    return {loss: params for loss, (_, params) in best.items()}


def write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    def cell(value: Any) -> Any:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:.6f}"
        if isinstance(value, dict):
            return json.dumps(value)
        if isinstance(value, list):
            return ";".join(f"{v:.6f}" if isinstance(v, float) else str(v) for v in value)
        return "" if value is None else value

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: cell(row.get(k)) for k in columns} for row in rows)
    write_text(path, buf.getvalue())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--part", dest="parts", action="append", choices=list(PARTS), help="repeatable")
    add("--list", action="store_true", help="list the parts and exit")
    add("--seeds", type=common.positive_int, default=None, help="seeds per config")
    add("--only", type=lambda s: s.split(","), default=None, help="labels subset")
    add("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    add("--threads", type=common.positive_int, default=None, help="torch threads")
    add("--jobs", type=common.positive_int, default=1, help="runs side by side (processes)")
    add("--epochs", type=common.positive_int, default=None, help="override epochs")
    add("--trials", type=common.positive_int, default=None, help="tuned parts: trials per loss")
    add("--quick", action="store_true", help="2 epochs, 1 seed, separate dirs")
    add("--runs", type=Path, default=None, help="run root (default runs/study)")
    add("--results", type=Path, default=None, help="results dir (default benchmarks/results)")
    return parser


class Study:
    """The loop: each config of a part through ``compare``, then the part's results files."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.runs, self.results = common.output_dirs(args, "study")
        self.wall_before: dict[str, float] = {}  # run_wall_time_sum_s of earlier invocations
        self.results.mkdir(parents=True, exist_ok=True)

    def config(self, raw: dict[str, Any]) -> Any:
        from chanloss.config import load_config

        raw = {**copy.deepcopy(raw), "seed": 0, "device": self.args.device}
        epochs = self.args.epochs or (2 if self.args.quick else None)
        return load_config(raw={**raw, "epochs": epochs or raw["epochs"]})

    def seeds(self, part: Part) -> int:
        return self.args.seeds or (1 if self.args.quick else part.seeds)

    def compare(self, part: Part, items: list[dict], save: Any) -> dict[str, Any]:
        """Train every item's config over the seeds, one config at a time (``save`` rewrites
        the results after each); ``{label: ConfigResult}``."""
        from chanloss.experiments.comparison import compare

        done: dict[str, Any] = {}
        for item in items:
            [done[item["label"]]] = compare([(item["label"], self.config(item["raw"]))],
                                            seeds=self.seeds(part), out_dir=self.runs / part.name,
                                            jobs=self.args.jobs, keep_diverged=True)  # fmt: skip
            save(done)
        return done

    def curves(self, part: Part, results: list[Any], split: str) -> None:
        """compare's accuracy curves, the legend giving each config's mean ``split`` accuracy."""
        from chanloss.experiments.comparison import plot_curves

        def legend(r: Any) -> str:
            mean = r.val_mean if split == "val" else r.mean
            return f"{r.label} ({split} {100 * mean:.2f}%)"

        path = self.results / f"study_{part.name}_curves.png"
        plot_curves(results, path, legend=legend)

    def meta(self, part: Part, start: float, done: dict, extra: dict) -> dict[str, Any]:
        path = self.results / f"study_{part.name}.json"
        before = common.read_json(path, {})
        before = self.wall_before.setdefault(part.name, before.get("run_wall_time_sum_s", 0.0))
        times = [t for r in done.values() for t in r.train_time_s]
        return {
            "part": part.name, "kind": part.kind, "dataset": part.dataset, "column": part.column,
            "recipe": recipe(part), "seeds": self.seeds(part), "quick": self.args.quick,
            "epochs": self.args.epochs or (2 if self.args.quick else recipe(part)["epochs"]),
            "machine": common.machine_info(resolve_device(self.args.device)),
            "device_setting": self.args.device, "wall_time_s": round(time.time() - start, 1),
            "command": common.command_line(__file__, None),
            "complete": not self.args.only and all(
                len(r.test_acc) + len(r.diverged) == self.seeds(part) for r in done.values()),
            "run_time_sum_s": round(sum(times), 1),
            "run_wall_time_sum_s": round(before + time.time() - start, 1),  # all invocations
            **extra,
        }  # fmt: skip

    def chosen(self, part: Part) -> dict[str, dict[str, Any]]:
        path = self.results / f"study_{part.sweep_part}.json"
        data = common.read_json(path)
        if not data or not data.get("complete"):
            quick = " --quick" if self.args.quick else ""
            raise SystemExit(f"part {part.name!r} uses the values chosen by the complete sweep "
                             f"{part.sweep_part!r} ({path}); run: python benchmarks/study/"
                             f"run_study.py --part {part.sweep_part}{quick}")  # fmt: skip
        return data["chosen"]

    def run_sweep(self, part: Part, start: float) -> None:
        items = [i for i in sweep_configs(part) if not self.args.only
                 or i["loss"] in self.args.only or i["label"] in self.args.only]  # fmt: skip
        epochs = self.config(items[0]["raw"]).epochs

        def save(done: dict[str, Any]) -> dict[str, Any]:
            rows = [{"part": part.name, "dataset": part.dataset, "loss": i["loss"],
                     "label": i["label"], "params": i["params"], "epochs": epochs,
                     "val_fraction": VAL_FRACTION, **_counts(done[i["label"]], "val")}
                    for i in items if i["label"] in done]  # fmt: skip
            chosen = choose([{k: r[k] for k in ("loss", "params", "val_acc_mean", "val_acc_std")}
                             for r in rows])  # fmt: skip
            for r in rows:
                r["chosen"] = chosen.get(r["loss"]) == r["params"]
            write_csv(self.results / f"study_{part.name}.csv", SWEEP_COLUMNS, rows)
            extra = {"selection": "highest mean final-epoch validation accuracy over seeds "
                     f"(val_fraction {VAL_FRACTION} of the training split); test never read",
                     "val_fraction": VAL_FRACTION, "grids": part.grids, "chosen": chosen,
                     "chosen_val_acc": {r["loss"]: [r["val_acc_mean"], r["val_acc_std"]]
                                        for r in rows if r["chosen"]},
                     "configs": len(items)}  # fmt: skip
            meta = self.meta(part, start, done, extra)
            meta["complete"] = meta["complete"] and len(done) == len(items)
            write_json(self.results / f"study_{part.name}.json", meta)
            return chosen

        done = self.compare(part, items, save)
        chosen = save(done)
        defaults = {name: grid(spec)[0] for name, spec in part.grids.items()}
        self.curves(part, [done[i["label"]] for i in items if i["params"] in (
            chosen.get(i["loss"]), defaults[i["loss"]])], "val")  # fmt: skip
        common.log(f"{part.name}: chosen {json.dumps(chosen)}; results in {self.results}")

    def run_study(self, part: Part, start: float, items: list | None = None, extra: Any = None):
        only, chosen = self.args.only, {}
        if items is None:
            wanted = only if only is not None else part.losses
            if wanted is None or any(name in wanted for name in SETTINGS["tuned"]):
                chosen = self.chosen(part)
            items = study_configs(part, chosen, only)
        epochs = self.config(items[0]["raw"]).epochs

        def save(done: dict[str, Any]) -> None:
            rows = [{"part": part.name, "dataset": part.dataset, "label": i["label"],
                     "model": i["raw"]["model"]["name"], "params": i["params"], "epochs": epochs,
                     "losses": "+".join(e["name"] for e in i["raw"]["losses"]),
                     **_counts(done[i["label"]], "test")} for i in items if i["label"] in done]  # fmt: skip
            write_csv(self.results / f"study_{part.name}.csv", STUDY_COLUMNS, rows)
            meta = self.meta(part, start, done, {
                "chosen_from": part.sweep_part if part.kind == "study" else part.name,
                "chosen": chosen, **(extra or {}),
                "losses": {i["label"]: i["raw"]["losses"] for i in items}})  # fmt: skip
            meta["complete"] = meta["complete"] and len(done) == len(items)
            write_json(self.results / f"study_{part.name}.json", meta)

        done = self.compare(part, items, save)
        save(done)
        self.curves(part, list(done.values()), "test")
        common.log(f"{part.name}: {time.time() - start:.0f} s; results in {self.results}")

    def run_tuned(self, part: Part, start: float) -> None:
        """Tune every loss with ``chanloss tune`` (same budget, validation only), then train the
        chosen settings on the full training split over the seeds like a study part."""
        from chanloss.tuning import tune

        trials = 2 if self.args.quick else (self.args.trials or part.trials)
        items, searches = [], {}
        for item in tuned_search_configs(part, self.args.only):
            out, t0 = self.runs / part.name / item["label"] / "tune", time.time()
            summary = tune(self.config(item["raw"]), out, trials=trials, confirm_seeds=0,
                           resume=(out / "study.db").exists(), log=common.log)  # fmt: skip
            best = yaml.safe_load((out / "best.yaml").read_text())
            items.append(tuned_study_config(part, item["label"], best))
            searches[item["label"]] = {"chosen": summary["best"]["params"],
                                       "val_acc": summary["best"]["val_acc"],
                                       "complete": summary["counts"]["COMPLETE"],
                                       "pruned": summary["counts"]["PRUNED"],
                                       "search_wall_s": round(time.time() - t0, 1)}  # fmt: skip
        selection = ("chanloss tune: TPE + median pruner, final-epoch validation accuracy "
                     f"(val_fraction {VAL_FRACTION}); each loss's declared search space plus "
                     f"optim.lr in {SETTINGS['tune']['lr']}; test never read")  # fmt: skip
        tuned = {"trials": trials, "selection": selection, "searches": searches}
        self.run_study(part, start, items=items, extra={"tuned": tuned})


def _counts(result: Any, split: str) -> dict[str, Any]:
    """A row's seed counts and accuracies (``split``: val or test) from a ConfigResult."""
    accs = result.val_acc if split == "val" else result.test_acc
    mean = (result.val_mean if split == "val" else result.mean) if accs else math.nan
    std = (result.val_std if split == "val" else result.std) if accs else math.nan
    times = result.train_time_s
    return {"seeds": len(result.test_acc) + len(result.diverged), "finished_seeds": len(accs),
            "diverged_seeds": len(result.diverged), f"{split}_acc_mean": mean,
            f"{split}_acc_std": std, f"{split}_accs": accs,
            "train_time_mean_s": sum(times) / len(times) if times else math.nan}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list or not args.parts:
        for part in PARTS.values():
            model = (part.model or SETTINGS["recipes"][part.dataset]["model"])["name"]
            common.log(f"{part.name:<24} {part.kind:<6} {part.dataset:<12} {model:<14} "
                       f"{part.estimate}")  # fmt: skip
        if not args.list:
            common.log("choose one with --part NAME")
        return 0 if args.list else 2
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    study = Study(args)
    for name in args.parts:
        part, start = PARTS[name], time.time()
        {"sweep": study.run_sweep, "tuned": study.run_tuned}.get(part.kind, study.run_study)(
            part, start
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
