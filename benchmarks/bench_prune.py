"""Channel pruning: CPLI against L1, BN-scale, Taylor and random, on models trained with CE,
CE + MC-Loss and (ConvNet) CE + CC-Loss.

For each setup, loss and seed a model is trained, then ``chanloss prune`` (the library call
:func:`chanloss.pruning.prune_checkpoint`) prunes it at 2x and 4x fewer MACs by every method
with the same fine-tune budget. Reported per (setup, loss, speedup, method): test accuracy
after fine-tuning, mean +- sample std over seeds, the accuracy right after pruning, MACs and
the measured CPU latency at batch 64; and two verdicts: where CPLI beats the best baseline by
more than twice the standard error of the difference of means, and whether MC-trained models
lose less accuracy than CE-trained ones.

Sized for a shared 2-core CPU (short training, one fine-tune epoch, a reduced and easier
synthetic fine-grained set: 100 training images per class, ``difficulty`` 0): the accuracies are those of small, briefly trained models.

    nice -n 10 python benchmarks/bench_prune.py            # -> results/prune_cpu.json
    python benchmarks/bench_prune.py --quick               # smoke test (one seed, tiny)
"""

from __future__ import annotations

import argparse
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
from _common import QUICK_DIR, RESULTS_DIR, machine_info, write_json  # noqa: E402

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
SETUPS: dict[str, dict[str, Any]] = {
    "convnet-mnist5k": {
        "model": {"name": "convnet_small", "width": 16, "feature_channels": 30, "pools": 2},
        "data": {"name": "mnist5k", "val_fraction": 0.1, "augment": {"crop_padding": 2}},
        "losses": {
            "ce": [{"name": "ce"}],
            "mc": [{"name": "ce"}, {"name": "mc"}],
            "cc": [{"name": "ce"}, {"name": "cc", "reduction": 4}],
        },
        "epochs": 6,
        "batch_size": 32,
    },
    "resnet20-finegrained": {  # option-A shortcuts (the paper's CIFAR choice)
        "model": {"name": "resnet20"},
        "data": FINEGRAINED,
        "losses": {"ce": [{"name": "ce"}], "mc": [{"name": "ce"}, {"name": "mc"}]},
        "epochs": 5,
        "batch_size": 32,
    },
    "resnet20B-finegrained": {
        "model": {"name": "resnet20", "shortcut": "B"},
        "data": FINEGRAINED,
        "losses": {"ce": [{"name": "ce"}]},
        "epochs": 5,
        "batch_size": 32,
    },
    "vgg16narrow-finegrained": {
        "model": {"name": "vgg16_bn", "width": 0.25},
        "data": FINEGRAINED,
        "losses": {"ce": [{"name": "ce"}]},
        "epochs": 5,
        "batch_size": 32,
    },
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
        else:
            raw["data"] = {"name": "digits", "val_fraction": 0.1}
            raw["model"] = {"name": "convnet_small", "width": 4, "feature_channels": 20}
    return raw


def run(args: argparse.Namespace) -> dict[str, Any]:
    from chanloss.config import validate_config
    from chanloss.run.session import train

    torch.set_num_threads(args.threads)
    speedups = [float(s) for s in args.speedups.split(",")]
    seeds = 1 if args.quick else (len(args.seed_list.split(",")) if args.seed_list else args.seeds)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_prune_") as tmp:
        seed_list = [int(v) for v in args.seed_list.split(",")] if args.seed_list else range(seeds)
        for seed in seed_list:
            for setup_name in args.setups.split(","):
                setup = SETUPS[setup_name]
                for loss_name, losses in setup["losses"].items():
                    if args.losses and loss_name not in args.losses.split(","):
                        continue
                    run_dir = Path(tmp) / f"{setup_name}-{loss_name}-{seed}"
                    config = validate_config(_config(setup, losses, seed, args.quick))
                    t0 = time.perf_counter()
                    summary = train(config, run_dir, verbose=0)
                    print(
                        f"[{time.perf_counter() - started:6.0f}s] {setup_name} {loss_name} seed "
                        f"{seed}: trained in {time.perf_counter() - t0:.0f} s, test "
                        f"{100 * summary['final_test_acc']:.2f}%",
                        flush=True,
                    )
                    for speedup in speedups:
                        for method, refit in _variants(args):
                            rows.append(
                                _prune_row(
                                    args,
                                    run_dir,
                                    setup_name,
                                    loss_name,
                                    seed,
                                    speedup,
                                    method,
                                    refit,
                                )
                            )
                            r = rows[-1]
                            print(
                                f"[{time.perf_counter() - started:6.0f}s]   {r['method']} "
                                f"{speedup:g}x: {r['speedup']:.2f}x, test "
                                f"{100 * r['test_original']:.1f} -> {100 * r['test_pruned']:.1f}"
                                f" -> {100 * r['test_finetuned']:.1f}% (kept {r['kept']}; "
                                f"prune {r['prune_s']:.1f} s, batch-64 latency "
                                f"{r['latency64_before_ms'] / r['latency64_after_ms']:.2f}x)",
                                flush=True,
                            )
                    save(payload(args, rows, seeds, speedups, started, finished=False))
    return payload(args, rows, seeds, speedups, started, finished=True)


def _variants(args: argparse.Namespace) -> list[tuple[str, bool]]:
    refits = {"both": (False, True), "on": (True,), "off": (False,)}[args.refit]
    return [(m, r) for m in args.methods.split(",") for r in refits]


def _prune_row(
    args: argparse.Namespace,
    run_dir: Path,
    setup: str,
    loss: str,
    seed: int,
    speedup: float,
    method: str,
    refit: bool,
) -> dict[str, Any]:
    """One ``chanloss prune`` (fine-tuned with the defaults) and what the tables need."""
    from chanloss.pruning import prune_checkpoint

    label = method + (REFIT if refit else "")
    result = prune_checkpoint(
        run_dir / "last.pt",
        run_dir / f"prune-{label}-{speedup:g}",
        method=method,
        speedup=speedup,
        refit=refit,
        finetune_epochs=args.finetune_epochs,
        overrides=[
            "prune.latency_repeats=5",
            f"prune.calibration_images={args.calibration_images}",
        ],
        verbose=False,
    )
    acc, latency = result["accuracy"], result["latency_ms"]
    return {
        "setup": setup,
        "loss": loss,
        "seed": seed,
        "speedup_target": speedup,
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


def payload(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    seeds: int,
    speedups: list[float],
    started: float,
    *,
    finished: bool,
) -> dict[str, Any]:
    names = args.setups.split(",")
    return {
        "benchmark": "prune",
        "quick": args.quick,
        "finished": finished,
        "machine": machine_info("cpu"),
        "settings": {
            "seeds": seeds,
            "speedups": speedups,
            "finetune_epochs": args.finetune_epochs,
            "calibration_images": args.calibration_images,
            "cpli_mix": args.cpli_mix,
            "methods": args.methods.split(","),
            "refit": args.refit,
            "setups": {
                name: _config(SETUPS[name], [], 0, args.quick)
                | {
                    "losses": [
                        x
                        for x in SETUPS[name]["losses"]
                        if not args.losses or x in args.losses.split(",")
                    ]
                }
                for name in names
            },
        },
        "rows": rows,
        "summary": summarise(rows),
        "time_s": time.perf_counter() - started,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (setup, loss, speedup, method): mean/std of the accuracies, MACs and latency; the
    CPLI-vs-best-baseline and MC-vs-CE verdicts."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["setup"], r["loss"], r["speedup_target"], r["method"]), []).append(r)
    cells = []
    for (setup, loss, speedup, method), rs in groups.items():
        ft = _mean_std([r["test_finetuned"] for r in rs])
        pr = _mean_std([r["test_pruned"] for r in rs])
        orig = _mean_std([r["test_original"] for r in rs])
        cells.append(
            {
                "setup": setup,
                "loss": loss,
                "speedup_target": speedup,
                "method": method,
                "n": len(rs),
                "test_original": orig,
                "test_pruned": pr,
                "test_finetuned": ft,
                "drop": orig[0] - ft[0],
                "speedup": statistics.fmean(r["speedup"] for r in rs),
                "macs_after": statistics.fmean(r["macs_after"] for r in rs),
                "macs_before": rs[0]["macs_before"],
                "latency64_ratio": statistics.fmean(
                    r["latency64_before_ms"] / r["latency64_after_ms"] for r in rs
                ),
                "latency64_after_ms": statistics.fmean(r["latency64_after_ms"] for r in rs),
                "prune_s": statistics.fmean(r["prune_s"] for r in rs),
            }
        )
    keyed = {(c["setup"], c["loss"], c["speedup_target"], c["method"]): c for c in cells}
    verdicts = _verdicts(keyed)
    mc_vs_ce = []
    for (setup, loss, speedup, method), cell in keyed.items():
        if loss != "mc" or (setup, "ce", speedup, method) not in keyed:
            continue
        ce = keyed[(setup, "ce", speedup, method)]
        mc_vs_ce.append(
            {
                "setup": setup,
                "speedup_target": speedup,
                "method": method,
                "drop_ce": ce["drop"],
                "drop_mc": cell["drop"],
                "mc_loses_less": cell["drop"] < ce["drop"],
            }
        )
    return {"cells": cells, "cpli_vs_best_baseline": verdicts, "mc_vs_ce": mc_vs_ce}


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


_OUT: list[Path] = []


def save(result: dict[str, Any]) -> None:
    """Write the results JSON (after every trained model, so that a run stopped early keeps
    what it measured; ``finished`` says whether it completed). ``make report`` renders it."""
    write_json(_OUT[0], result)


def _cell(row: dict[str, Any]) -> tuple:
    return (row["setup"], row["loss"], row["speedup_target"], row["method"])


def merge(paths: list[Path]) -> dict[str, Any]:
    """One result from several (the setups run as separate processes)."""
    parts = [json.loads(p.read_text()) for p in paths]
    rows, seen = [], set()
    for row in (r for part in parts for r in part["rows"]):
        key = (row["setup"], row["loss"], row["seed"], row["speedup_target"], row["method"])
        if key not in seen:  # a model measured by two processes counts once
            seen.add(key)
            rows.append(row)
    first = parts[0]
    return {
        **first,
        # complete when every (setup, loss, speedup, method) cell has all the seeds, even if a
        # process was stopped after the model the others did not cover
        "finished": len(
            {len([r for r in rows if _cell(r) == _cell(x)]) for x in rows}
            | {max(len({r["seed"] for r in rows if r["setup"] == x["setup"]}) for x in rows)}
        )
        == 1,
        "settings": {
            **first["settings"],
            "seeds": min(
                len({r["seed"] for r in rows if r["setup"] == name})
                for name in {r["setup"] for r in rows}
            ),
            "setups": {k: v for p in parts for k, v in p["settings"]["setups"].items()},
        },
        "sources": [str(p.name) for p in paths],
        "rows": rows,
        "summary": summarise(rows),
        "time_s": sum(p["time_s"] for p in parts),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out or ((QUICK_DIR if args.quick else RESULTS_DIR) / "prune_cpu.json")
    _OUT.append(out)
    result = merge(args.merge) if args.merge else run(args)
    save(result)
    for v in result["summary"]["cpli_vs_best_baseline"]:
        print(f"{v['setup']} {v['loss']} {v['speedup_target']:g}x: {v['cpli']} - "
              f"{v['best_baseline']} = {100 * v['cpli_minus_best']:+.1f} points: {v['verdict']}")  # fmt: skip
    print(f"wrote {out} in {result['time_s']:.0f} s (make report shows it on docs/results.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
