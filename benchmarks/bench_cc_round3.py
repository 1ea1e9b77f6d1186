"""CC-Loss's two readings against cross-entropy and the SE-gate control, with gradient shares.

    python tools/make_image_folder.py          # the 56 px folder (runs/bench-folder/...)
    python benchmarks/bench_cc_round3.py [--datasets digits,mnist5k,finegrained,folder]
        [--seeds 3] [--runs runs/cc_round3] [--out benchmarks/results/cc_round3.json]

Arms (``data.val_fraction = 0.2``, ``grad_share_every = 10``): ``ce``; ``ce+se`` (the SE gate
in the model, the fair control of the gate reading); ``cc-gate`` (CE + CC-Loss, ratio form, on
the gate's attention); ``cc-branch`` (CE + CC-Loss on its own side-branch SE attention).

CC-Loss's weight per data set and placement is chosen on VALIDATION (seed 0 with each of
``WEIGHTS``; ties: the smaller) and run with the other seeds; test accuracy is only reported,
with the project's verdict. Recipes SHRUNK to an hour of one core (``RECIPES``); resumable.
"""

from __future__ import annotations

import argparse
import copy
import csv
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as common  # noqa: E402

FOLDER = common.REPO_ROOT / "runs/bench-folder/mnist-shift56"
_SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
_COSINE = {"name": "cosine", "warmup_epochs": 1}


def _narrow(dataset: str, epochs: int, **model: Any) -> dict[str, Any]:
    base = copy.deepcopy(common.STUDY_RECIPES[dataset])
    base["model"].update(model)
    base["epochs"] = epochs
    return base


#: The shrunk recipes: the study's (benchmarks/study/study.yaml) with narrower models and fewer
#: epochs; the folder's is the tune benchmark's (benchmarks/bench_tune.py) with fewer epochs.
RECIPES: dict[str, dict[str, Any]] = {
    "digits": _narrow("digits", 12, width=8),
    "mnist5k": _narrow("mnist5k", 6, width=8),
    "finegrained": _narrow("finegrained", 16, width=8),
    "folder": {
        "model": {"name": "convnet_small", "width": 8, "feature_channels": 30, "pools": 2},
        "data": {"name": "image_folder", "root": str(FOLDER), "options": {"colour": "L"}},
        "optim": _SGD,
        "schedule": _COSINE,
        "epochs": 6,
        "batch_size": 64,
    },
}
#: The config's ``weight`` (a multiplier of the loss's own default: 0.01 with the gate, 1 with
#: the branch) swept per reading; both sweep the weights 0.01 and 0.1 in effect.
WEIGHTS = {"cc-gate": (1.0, 10.0), "cc-branch": (0.01, 0.1)}
ARMS = ("ce", "ce+se", "cc-gate", "cc-branch")


def arm_config(dataset: str, arm: str, seed: int, weight: float | None) -> dict[str, Any]:
    raw = copy.deepcopy(RECIPES[dataset])
    raw["data"]["val_fraction"] = 0.2
    raw.update(seed=seed, device="cpu", grad_share_every=10)
    raw["losses"] = [{"name": "ce"}]
    if arm == "ce+se":
        raw["model"]["channel_gate"] = "se"
    elif arm.startswith("cc-"):
        placement = arm.removeprefix("cc-")
        raw["losses"].append(
            {"name": "cc", "placement": placement, "form": "ratio", "weight": weight}
        )
    return raw


def shares(run_dir: Path) -> dict[str, list[float]]:
    """Per-epoch gradient shares of a run's metrics.csv (feature map, attention)."""
    out: dict[str, list[float]] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for key in ("gshare_cc", "gshare_cc_att", "gnorm_ce"):
                if row.get(key):
                    out.setdefault(key, []).append(float(row[key]))
    return out


def run(dataset: str, arm: str, seed: int, weight: float | None, runs: Path) -> dict[str, Any]:
    tag = f"{arm}-w{weight:g}" if weight is not None else arm
    run_dir = runs / dataset / tag / f"seed{seed}"
    got = common.train_run(arm_config(dataset, arm, seed, weight), run_dir)
    common.log(f"{dataset} {tag} seed {seed}: val {got['val_acc']} test {got['test_acc']}")
    return {"seed": seed, "weight": weight, **got, "shares": shares(run_dir)}


def verdicts(arms: dict[str, list[dict[str, Any]]], epochs: int) -> list[str]:
    """The project's verdict lines: each CC arm against CE and against the SE control."""
    from chanloss.config import load_config
    from chanloss.experiments.comparison import ConfigResult
    from chanloss.experiments.verdict import gap_line

    def result(label: str) -> ConfigResult:
        rows = arms[label]
        config = load_config(raw={**arm_config("digits", "ce", 0, None), "epochs": epochs})
        return ConfigResult(
            label, config, [r["seed"] for r in rows], [r["test_acc"] for r in rows], [], 0, []
        )

    pairs = [("cc-gate", "ce"), ("cc-gate", "ce+se"), ("cc-branch", "ce"), ("ce+se", "ce")]
    return [gap_line(result(base), result(other)) for other, base in pairs]


def evaluate(dataset: str, seeds: int, runs: Path) -> dict[str, Any]:
    arms: dict[str, list[dict[str, Any]]] = {}
    sweep: dict[str, dict[str, float]] = {}
    for arm in ARMS:
        if not arm.startswith("cc-"):
            arms[arm] = [run(dataset, arm, s, None, runs) for s in range(seeds)]
            continue
        first = {w: run(dataset, arm, 0, w, runs) for w in WEIGHTS[arm]}
        sweep[arm] = {f"{effective(arm, w):g}": first[w]["val_acc"] for w in WEIGHTS[arm]}
        best = max(WEIGHTS[arm], key=lambda w: (first[w]["val_acc"] or 0.0, -w))
        arms[arm] = [first[best]] + [run(dataset, arm, s, best, runs) for s in range(1, seeds)]
    summary = {
        arm: {
            "weight": rows[0]["weight"],
            "effective_weight": effective(arm, rows[0]["weight"]),
            "val_mean": statistics.fmean(r["val_acc"] for r in rows),
            "test_mean": statistics.fmean(r["test_acc"] for r in rows),
            "test_std": statistics.stdev(r["test_acc"] for r in rows) if len(rows) > 1 else 0.0,
            "share_first_epoch": _mean_at(rows, 0),
            "share_last_epoch": _mean_at(rows, -1),
        }
        for arm, rows in arms.items()
    }
    return {
        "recipe": RECIPES[dataset],
        "sweep_val": sweep,
        "arms": summary,
        "runs": arms,
        "verdicts": verdicts(arms, RECIPES[dataset]["epochs"]),
    }


def effective(arm: str, weight: float | None) -> float | None:
    """The CC-Loss weight in effect: the config's multiplier x the placement's default."""
    from chanloss.losses.cc_loss import DEFAULT_WEIGHTS

    if weight is None:
        return None
    return weight * DEFAULT_WEIGHTS[arm.removeprefix("cc-")]


def _mean_at(rows: list[dict[str, Any]], index: int) -> float | None:
    values = [r["shares"]["gshare_cc"][index] for r in rows if r["shares"].get("gshare_cc")]
    return statistics.fmean(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,mnist5k,finegrained,folder")
    parser.add_argument("--seeds", type=common.positive_int, default=3)
    parser.add_argument("--runs", type=Path, default=common.REPO_ROOT / "runs/cc_round3")
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "cc_round3.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    payload = common.read_json(args.out, {})
    results = payload.get("datasets", {})
    for dataset in args.datasets.split(","):
        if dataset == "folder" and not (FOLDER / "train").is_dir():
            raise SystemExit(f"{FOLDER} is missing: run python tools/make_image_folder.py")
        results[dataset] = evaluate(dataset, args.seeds, args.runs)
        common.write_json(
            args.out,
            {
                "benchmark": "CC-Loss gate vs branch vs CE vs CE + SE gate (shrunk recipes)",
                "weights_swept": sorted({effective(a, w) for a, ws in WEIGHTS.items() for w in ws}),
                "seeds": args.seeds,
                "machine": common.machine_info("cpu"),
                "datasets": results,
            },
        )
    figure(results, args.runs, args.out.with_name(args.out.stem + "_grad_share.png"))
    common.log(f"wrote {args.out}")


def figure(results: dict[str, Any], runs: Path, path: Path) -> None:
    """The gradient share of both CC readings (seed 0, the chosen weight) per data set."""
    from chanloss.analysis.grad_share import plot_grad_share

    curves = []
    for dataset, entry in results.items():
        for arm in ("cc-gate", "cc-branch"):
            weight = entry["arms"][arm]["weight"]
            run_dir = runs / dataset / f"{arm}-w{weight:g}" / "seed0"
            label = f"{dataset} {arm} w {effective(arm, weight):g}"
            curves.append((label, run_dir / "metrics.csv"))
    if plot_grad_share(path, curves):
        common.log(f"wrote {path}")


if __name__ == "__main__":
    main()
