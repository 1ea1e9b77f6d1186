"""CC-Loss forms on VALIDATION: which form, weight, hidden width and sampler to make the default.

    python benchmarks/bench_cc_forms.py --dataset digits [--model convnet_small|resnet20]
        [--configs LABEL,...] [--seeds N] [--epochs N] [--runs DIR] [--out PATH]

Each run trains CE alone (``ce``) or CE + CC-Loss with one setting of the grid, on the data
set's study recipe (``benchmarks/study/study.yaml``) with a stratified validation split
(``data.val_fraction = 0.2``); the number recorded is the final **validation** accuracy (the
test split is never read). ``--epochs`` shortens the recipe (recorded). Runs in
``runs/cc_forms/`` are resumable; ``benchmarks/results/cc_forms.json`` accumulates every
(data set, model, setting) measured so far.

``--gradients`` instead writes each form's gradient norm w.r.t. the features (B = 32, C = 64,
7 x 7, 8 classes, normal times 1 ... 0.001) to ``results/cc_gradients.json`` (no training).

Grid (labels): ``ce``; ``ratio-w<w>``, ``margin-w<w>``, ``softplus-w<w>``, ``cosine-w<w>``
(form, weight ``w``, reduction 4); ``<form>-w<w>-h1`` / ``-h8`` (reduction 16, ``min_hidden``
1 or 8); ``<form>-w<w>-bal`` (``data.sampler: class_balanced``, 8 samples per class).
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as common  # noqa: E402

from chanloss.core.text import mean_std  # noqa: E402

VAL_FRACTION = 0.2
FORMS = ("ratio", "margin", "softplus", "cosine")
_LABEL = re.compile(r"^(ratio|margin|softplus|cosine)-w([0-9.e+-]+)(?:-(h1|h8|bal))?$")


def setting(label: str) -> dict[str, Any]:
    """``{"losses": [...], "data": {...}}`` changes for a grid label (see the module doc)."""
    if label == "ce":
        return {"losses": [{"name": "ce"}], "data": {}}
    match = _LABEL.match(label)
    if match is None:
        raise SystemExit(
            f"unknown config label {label!r} (expected ce or <form>-w<weight>[-h1|-h8|-bal])"
        )
    form, weight, extra = match.group(1), float(match.group(2)), match.group(3)
    cc: dict[str, Any] = {
        "name": "cc",
        "placement": "branch",  # the reading these results were recorded with
        "form": form,
        "weight": weight,
        "reduction": 4,
        "min_hidden": 1,
    }
    data: dict[str, Any] = {}
    if extra in ("h1", "h8"):
        cc.update(reduction=16, min_hidden=1 if extra == "h1" else 8)
    elif extra == "bal":
        data = {"sampler": "class_balanced", "samples_per_class": 8}
    return {"losses": [{"name": "ce"}, cc], "data": data}


def raw_config(dataset: str, model: str, label: str, seed: int, epochs: int | None) -> dict:
    raw = copy.deepcopy(common.STUDY_RECIPES[dataset])
    if model != "convnet_small":
        raw["model"] = {"name": model}
    raw["data"]["val_fraction"] = VAL_FRACTION
    change = setting(label)
    raw["losses"] = change["losses"]
    raw["data"].update(change["data"])
    raw["seed"] = seed
    raw["device"] = "cpu"
    if epochs is not None:
        raw["epochs"] = epochs
    return raw


def gradients(out: Path) -> None:
    """``||dL/dF||`` per form and feature scale (see the module doc)."""
    import torch

    from chanloss.losses import CCLoss

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(32, 64, 7, 7, generator=gen, dtype=torch.float64)
    y = torch.arange(32) % 8
    scales = [1.0, 0.1, 0.01, 0.001]
    rows = []
    for form in FORMS:
        torch.manual_seed(1)
        loss = CCLoss(num_channels=64, placement="branch", reduction=4, form=form).double()
        norms = []
        for scale in scales:
            x = (x0 * scale).requires_grad_(True)
            (g,) = torch.autograd.grad(loss(x, y), x)
            norms.append(float(g.norm()))
        rows.append({"form": form, "grad_norms": norms})
    payload = {
        "benchmark": "cc_gradients",
        "setup": "B=32, C=64, 7x7, 8 classes x 4, N(0,1) * scale, reduction 4, weight 1, "
        "float64, seeded SE initialisation",
        "scales": scales,
        "rows": rows,
        "commit": common.git_commit(),
    }
    common.write_json(out, payload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gradients", action="store_true", help="gradient norms only")
    parser.add_argument("--dataset", choices=sorted(common.STUDY_RECIPES))
    parser.add_argument("--model", default="convnet_small", choices=["convnet_small", "resnet20"])
    parser.add_argument("--configs", type=lambda s: s.split(","), default=None)
    parser.add_argument("--seeds", type=common.positive_int, default=2)
    parser.add_argument("--epochs", type=common.positive_int, default=None)
    parser.add_argument("--threads", type=common.positive_int, default=1)
    parser.add_argument("--runs", type=Path, default=common.REPO_ROOT / "runs" / "cc_forms")
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "cc_forms.json")
    args = parser.parse_args(argv)
    if args.gradients:
        gradients(common.RESULTS_DIR / "cc_gradients.json")
        return 0
    if args.dataset is None or args.configs is None:
        parser.error("--dataset and --configs are required (or --gradients)")
    for label in args.configs:
        setting(label)  # fail early on a typo
    import torch

    torch.set_num_threads(args.threads)
    rows = {
        (r["dataset"], r["model"], r["label"], r["epochs"]): r
        for r in common.read_json(args.out, {"rows": []})["rows"]
    }
    for label in args.configs:
        row = measure(args, label)
        rows[(args.dataset, args.model, label, row["epochs"])] = row
        results = {
            "benchmark": "cc_forms",
            "selection": "final-epoch validation accuracy (val_fraction 0.2); test never read",
            "val_fraction": VAL_FRACTION,
            "machine": common.machine_info("cpu"),
            "commit": common.git_commit(),
            "rows": sorted(rows.values(), key=lambda r: (r["dataset"], r["model"], r["label"])),
        }
        common.write_json(args.out, results)
    return 0


def measure(args: argparse.Namespace, label: str) -> dict[str, Any]:
    """One grid label trained over the seeds: its row of the results file."""
    accs, start = [], time.perf_counter()
    for seed in range(args.seeds):
        raw = raw_config(args.dataset, args.model, label, seed, args.epochs)
        run_dir = (
            args.runs / f"{args.dataset}-{args.model}-e{raw['epochs']}" / label / f"seed{seed}"
        )
        accs.append(common.train_run(raw, run_dir)["val_acc"])
        common.log(f"{args.dataset} {args.model} {label} seed {seed}: val {accs[-1]}")
    finite = [a for a in accs if a is not None]
    mean, std = mean_std(finite)
    return {
        "dataset": args.dataset,
        "model": args.model,
        "label": label,
        **setting(label),
        "epochs": raw["epochs"],
        "seeds": args.seeds,
        "val_accs": accs,
        "val_acc_mean": mean,
        "val_acc_std": 0.0 if len(finite) == 1 else std,  # as recorded: no spread from one seed
        "diverged_seeds": len(accs) - len(finite),
        "wall_s": round(time.perf_counter() - start, 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
