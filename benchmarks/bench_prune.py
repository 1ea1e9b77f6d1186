"""Channel pruning: CPLI against L1, BN-scale, Taylor and random, on models trained with CE,
CE + MC-Loss and (ConvNet) CE + CC-Loss.

    nice -n 10 python benchmarks/bench_prune.py            # -> results/prune_cpu.json
    python benchmarks/bench_prune.py --quick               # smoke test (one seed, tiny)

Per setup, loss and seed a model is trained, then pruned (``chanloss.pruning.prune_checkpoint``)
to 2x and 4x fewer MACs by every method with the same fine-tune budget. Reported: test accuracy
after fine-tuning (mean +- std over seeds), right after pruning, MACs, CPU latency at batch 64;
whether CPLI beats the best baseline (2 standard errors) and MC-trained models lose less than
CE-trained ones. Sized for a shared 2-core CPU (short training, one fine-tune epoch, an easy
fine-grained set): the accuracies are those of small, briefly trained models.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

from chanloss.core.text import mean_std  # noqa: E402
from chanloss.experiments.verdict import gap_of  # noqa: E402

METHODS = ("cpli", "l1", "bn_scale", "taylor", "random")
BASELINES = METHODS[1:]
REFIT = "+refit"  # the label suffix of a run with the least-squares refit
OPTIM = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}

FINEGRAINED = {
    "name": "finegrained",
    "val_fraction": 0.1,
    "options": {"num_classes": 10, "train_per_class": 100, "test_per_class": 30, "difficulty": 0.0},
    "augment": {"crop_padding": 2, "hflip": True},
}
LOSSES = {
    "ce": [{"name": "ce"}],
    "mc": [{"name": "ce"}, {"name": "mc"}],
    "cc": [{"name": "ce"}, {"name": "cc", "reduction": 4}],
}


def _setup(model: dict[str, Any], data: dict[str, Any], losses: str, epochs: int) -> dict:
    """A setup: its model, data, losses (names in ``LOSSES``), epochs, batch size 32."""
    chosen = {name: LOSSES[name] for name in losses.split(",")}
    return {"model": model, "data": data, "losses": chosen, "epochs": epochs, "batch_size": 32}


SETUPS: dict[str, dict[str, Any]] = {
    "convnet-mnist5k": _setup(
        {"name": "convnet_small", "width": 16, "feature_channels": 30, "pools": 2},
        {"name": "mnist5k", "val_fraction": 0.1, "augment": {"crop_padding": 2}},
        "ce,mc,cc",
        6,
    ),
    # option-A shortcuts (the paper's CIFAR choice)
    "resnet20-finegrained": _setup({"name": "resnet20"}, FINEGRAINED, "ce,mc", 5),
    "resnet20B-finegrained": _setup({"name": "resnet20", "shortcut": "B"}, FINEGRAINED, "ce", 5),
    "vgg16narrow-finegrained": _setup({"name": "vgg16_bn", "width": 0.25}, FINEGRAINED, "ce", 5),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, tiny models (smoke test)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--seed-list", default="", help="comma-separated seeds to run (default 0..seeds-1)"
    )
    parser.add_argument("--speedups", default="2,4", help="comma-separated MAC ratios")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument(
        "--refit", choices=("both", "on", "off"), default="both", help="criterion x refit"
    )
    parser.add_argument(
        "--cpli-mix", type=float, default=None, help="fix CPLI's mix (default: chosen on val)"
    )
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated")
    parser.add_argument("--losses", default="", help="comma-separated subset (default all)")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=None, help="combine result files into --out"
    )
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    return parser


def _config(setup: dict[str, Any], losses: list, seed: int, quick: bool) -> dict[str, Any]:
    raw = {
        "model": dict(setup["model"]),
        "data": {**setup["data"]},
        "losses": losses,
        "optim": OPTIM,
        "schedule": {"name": "cosine"},
        "epochs": setup["epochs"],
        "batch_size": setup["batch_size"],
        "seed": seed,
        "device": "cpu",
    }
    if quick:
        raw["epochs"] = 1
        if raw["data"]["name"] == "finegrained":
            raw["data"]["options"] = {"num_classes": 10, "train_per_class": 12, "test_per_class": 4}
        else:  # the setup's model (narrower ones cannot reach 2x with round_to 8)
            raw["data"] = {"name": "digits", "val_fraction": 0.1}
    return raw


def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train every (seed, setup, loss), prune it by every variant; the results, rewritten to
    ``out`` after every trained model (``finished`` false until the last)."""
    from chanloss.config import validate_config
    from chanloss.run.session import train

    torch.set_num_threads(args.threads)
    speedups = [float(s) for s in args.speedups.split(",")]
    seed_list = [int(v) for v in args.seed_list.split(",")] if args.seed_list else []
    seeds = 1 if args.quick else (len(seed_list) or args.seeds)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()

    def log(text: str) -> None:
        common.log(f"[{time.perf_counter() - started:6.0f}s] {text}")

    with tempfile.TemporaryDirectory(prefix="bench_prune_") as tmp:
        for seed, name in itertools.product(seed_list or range(seeds), args.setups.split(",")):
            for loss, losses in SETUPS[name]["losses"].items():
                if args.losses and loss not in args.losses.split(","):
                    continue
                run_dir = Path(tmp) / f"{name}-{loss}-{seed}"
                config = validate_config(_config(SETUPS[name], losses, seed, args.quick))
                t0 = time.perf_counter()
                test = train(config, run_dir, verbose=0)["final_test_acc"]
                log(
                    f"{name} {loss} seed {seed}: trained in {time.perf_counter() - t0:.0f} s, "
                    f"test {100 * test:.2f}%"
                )
                where = {"setup": name, "loss": loss, "seed": seed}
                for speedup, (method, refit) in itertools.product(speedups, _variants(args)):
                    where["speedup_target"] = speedup
                    rows.append(_prune_row(args, run_dir, where, method, refit))
                    log(f"  {_row_line(rows[-1])}")
                common.write_json(out, payload(args, rows, seeds, speedups, started, False))
    return payload(args, rows, seeds, speedups, started, True)


def _variants(args: argparse.Namespace) -> list[tuple[str, bool]]:
    refits = {"both": (False, True), "on": (True,), "off": (False,)}[args.refit]
    return [(m, r) for m in args.methods.split(",") for r in refits]


def _prune_row(
    args: argparse.Namespace, run_dir: Path, where: dict[str, Any], method: str, refit: bool
) -> dict[str, Any]:
    """One ``chanloss prune`` (fine-tuned with the defaults) and what the tables need."""
    from chanloss.pruning import prune_checkpoint

    label = method + (REFIT if refit else "")
    overrides = ["prune.latency_repeats=5", f"prune.calibration_images={args.calibration_images}"]
    if args.cpli_mix is not None:
        overrides.append(f"prune.mix={args.cpli_mix}")
    speedup = where["speedup_target"]
    result = prune_checkpoint(
        run_dir / "last.pt",
        run_dir / f"prune-{label}-{speedup:g}",
        method=method,
        speedup=speedup,
        refit=refit,
        finetune_epochs=args.finetune_epochs,
        overrides=overrides,
        verbose=False,
    )
    acc, latency = result["accuracy"], result["latency_ms"]
    return {
        **where,
        "method": label,
        "speedup": result["speedup"],
        "macs_before": result["macs"]["before"],
        "macs_after": result["macs"]["after"],
        "params_after": result["params"]["after"],
        "test_original": acc["original"]["test"],
        "test_pruned": acc["pruned"]["test"],
        "test_finetuned": acc["kept"]["test"],  # pruned.pt: the best on validation
        "val_pruned": acc["pruned"]["val"],
        "kept": result["kept"]["which"],
        "latency64_before_ms": latency["before"]["batch64"],
        "latency64_after_ms": latency["after"]["batch64"],
        "latency1_before_ms": latency["before"]["batch1"],
        "latency1_after_ms": latency["after"]["batch1"],
        "latency_threads": latency["threads"],
        "prune_s": result["time_s"]["prune"],
        "prune_cpu_s": result["time_s"]["prune_cpu"],
        "cpli_mix": result["cpli_mix"],
    }


def _row_line(r: dict[str, Any]) -> str:
    accs = " -> ".join(
        f"{100 * r[k]:.1f}" for k in ("test_original", "test_pruned", "test_finetuned")
    )
    latency = r["latency64_before_ms"] / r["latency64_after_ms"]
    return (
        f"{r['method']} {r['speedup_target']:g}x: {r['speedup']:.2f}x, test {accs}% (kept "
        f"{r['kept']}; prune {r['prune_s']:.1f} s, batch-64 latency {latency:.2f}x)"
    )


def payload(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    seeds: int,
    speedups: list[float],
    started: float,
    finished: bool,
) -> dict[str, Any]:
    losses = args.losses.split(",") if args.losses else None
    setups = {
        name: _config(SETUPS[name], [], 0, args.quick)
        | {"losses": [x for x in SETUPS[name]["losses"] if not losses or x in losses]}
        for name in args.setups.split(",")
    }
    return {
        "benchmark": "prune",
        "quick": args.quick,
        "finished": finished,
        "machine": common.machine_info("cpu"),
        "settings": {
            "seeds": seeds,
            "speedups": speedups,
            "finetune_epochs": args.finetune_epochs,
            "calibration_images": args.calibration_images,
            "cpli_mix": args.cpli_mix,
            "methods": args.methods.split(","),
            "refit": args.refit,
            "setups": setups,
        },
        "rows": rows,
        "summary": summarise(rows),
        "time_s": time.perf_counter() - started,
    }


def _cell(row: dict[str, Any]) -> tuple:
    return (row["setup"], row["loss"], row["speedup_target"], row["method"])


def _mean_std(values: list[float]) -> list[float]:
    """Mean and sample std (0 for one value: the file keeps a number)."""
    mean, std = mean_std(values)
    return [mean, 0.0 if len(values) == 1 else std]


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (setup, loss, speedup, method): mean/std of the accuracies, MACs and latency; the
    CPLI-vs-best-baseline and MC-vs-CE verdicts."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_cell(r), []).append(r)
    keyed = {}
    for (setup, loss, speedup, method), rs in groups.items():

        def mean(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.fmean(r[key] for r in rs)

        accs = {
            k: _mean_std([r[k] for r in rs])
            for k in ("test_original", "test_pruned", "test_finetuned")
        }
        keyed[(setup, loss, speedup, method)] = {
            "setup": setup,
            "loss": loss,
            "speedup_target": speedup,
            "method": method,
            "n": len(rs),
            **accs,
            "drop": accs["test_original"][0] - accs["test_finetuned"][0],
            "speedup": mean("speedup"),
            "macs_after": mean("macs_after"),
            "macs_before": rs[0]["macs_before"],
            "latency64_ratio": statistics.fmean(
                r["latency64_before_ms"] / r["latency64_after_ms"] for r in rs
            ),
            "latency64_after_ms": mean("latency64_after_ms"),
            "prune_s": mean("prune_s"),
        }
    mc_vs_ce = [
        {
            "setup": setup,
            "speedup_target": speedup,
            "method": method,
            "drop_ce": keyed[(setup, "ce", speedup, method)]["drop"],
            "drop_mc": cell["drop"],
            "mc_loses_less": cell["drop"] < keyed[(setup, "ce", speedup, method)]["drop"],
        }
        for (setup, loss, speedup, method), cell in keyed.items()
        if loss == "mc" and (setup, "ce", speedup, method) in keyed
    ]
    return {
        "cells": list(keyed.values()),
        "cpli_vs_best_baseline": _verdicts(keyed),
        "mc_vs_ce": mc_vs_ce,
    }


def _verdicts(keyed: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    """CPLI (with or without refit) against the best baseline of the same refit setting."""
    verdicts = []
    for setup, loss, speedup, method in keyed:
        if method.removesuffix(REFIT) != "cpli":
            continue
        suffix = REFIT if method.endswith(REFIT) else ""
        cpli = keyed[(setup, loss, speedup, method)]
        base = [
            keyed[(setup, loss, speedup, b + suffix)]
            for b in BASELINES
            if (setup, loss, speedup, b + suffix) in keyed
        ]
        if not base:
            continue
        best = max(base, key=lambda c: c["test_finetuned"][0])
        found = gap_of(*cpli["test_finetuned"], cpli["n"], *best["test_finetuned"], best["n"])
        diff, beyond = found.diff, found.beyond
        se = math.sqrt(  # kept in the file even for one seed (then the verdict is "cannot tell")
            cpli["test_finetuned"][1] ** 2 / cpli["n"] + best["test_finetuned"][1] ** 2 / best["n"]
        )
        verdicts.append(
            {
                "setup": setup,
                "loss": loss,
                "speedup_target": speedup,
                "cpli": method,
                "best_baseline": best["method"],
                "cpli_minus_best": diff,
                "standard_error": se,
                "verdict": ("CPLI better" if diff > 0 else "CPLI worse")
                if beyond
                else "cannot tell",
            }
        )
    return verdicts


def merge(paths: list[Path]) -> dict[str, Any]:
    """One result from several (the setups run as separate processes)."""
    parts = [json.loads(p.read_text()) for p in paths]
    rows, seen = [], set()
    for row in (r for part in parts for r in part["rows"]):
        key = (*_cell(row), row["seed"])
        if key not in seen:  # a model measured by two processes counts once
            seen.add(key)
            rows.append(row)
    per_cell = collections.Counter(_cell(r) for r in rows)
    seeds = {r["setup"]: len({x["seed"] for x in rows if x["setup"] == r["setup"]}) for r in rows}
    first = parts[0]
    return {
        **first,
        # complete when every (setup, loss, speedup, method) cell has all the seeds, even if a
        # process was stopped after the model the others did not cover
        "finished": len(set(per_cell.values()) | {max(seeds.values())}) == 1,
        "settings": {
            **first["settings"],
            "seeds": min(seeds.values()),
            "setups": {k: v for p in parts for k, v in p["settings"]["setups"].items()},
        },
        "sources": [str(p.name) for p in paths],
        "rows": rows,
        "summary": summarise(rows),
        "time_s": sum(p["time_s"] for p in parts),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out or ((common.QUICK_DIR if args.quick else common.RESULTS_DIR) / "prune_cpu.json")
    result = merge(args.merge) if args.merge else run(args, out)
    common.write_json(out, result)
    for v in result["summary"]["cpli_vs_best_baseline"]:
        common.log(
            f"{v['setup']} {v['loss']} {v['speedup_target']:g}x: {v['cpli']} - "
            f"{v['best_baseline']} = {100 * v['cpli_minus_best']:+.1f} points: {v['verdict']}"
        )
    common.log(f"wrote {out} in {result['time_s']:.0f} s (make report shows it on docs/results.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
