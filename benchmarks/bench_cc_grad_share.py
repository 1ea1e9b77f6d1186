"""CC-Loss's gradient share at initialisation: how hard each placement and form pulls on the
feature map against cross-entropy, at the default weight (what the default is chosen from).

    python benchmarks/bench_cc_grad_share.py [--datasets digits,mnist5k,finegrained]
        [--seeds 3] [--batches 5] [--out benchmarks/results/cc_grad_share.json]

For each recipe of ``bench_cc_round3.py``, seed, placement (``gate``: the SE block in the
model; ``branch``: the loss's side branch) and form, the seeded fresh model sees ``--batches``
training batches; the number is the median over batches and seeds of

    ||d (w * cc) / dF|| / ||d ce / dF||,   w = 0.01 (the gate's default weight) for every row,

linear in ``w`` (the margin form's old default was ``w = 1``: multiply its rows by 100), taken
with :class:`chanloss.run.grad_share.GradShare`; for the gate also on the attention vector.
Shares through training come from ``bench_cc_round3.py`` (``grad_share_every``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "study"))

import _common as common  # noqa: E402
from bench_cc_round3 import RECIPES  # noqa: E402

from chanloss.losses.cc_loss import DEFAULT_WEIGHT, DEFAULT_WEIGHTS  # noqa: E402

FORMS = ("ratio", "margin", "softplus", "cosine")
PLACEMENTS = ("gate", "branch")


def config_for(dataset: str, placement: str, form: str, seed: int) -> Any:
    from chanloss.config import load_config

    raw = {**RECIPES[dataset], "seed": seed, "device": "cpu"}
    raw["losses"] = [
        {"name": "ce"},
        # the gate's default weight 0.01 in effect for both (the branch's default is 1)
        {
            "name": "cc",
            "placement": placement,
            "form": form,
            "weight": DEFAULT_WEIGHT / DEFAULT_WEIGHTS[placement],
        },
    ]
    return load_config(raw=raw)


def shares(dataset: str, placement: str, form: str, seed: int, batches: int, data: Any) -> dict:
    """Median feature-map (and attention) share over ``batches`` batches of one seed."""
    from chanloss.data.base import to_float_images
    from chanloss.run.builders import build_augmentations, build_losses, build_model
    from chanloss.run.grad_share import GradShare

    config = config_for(dataset, placement, form, seed)
    torch.manual_seed(seed)
    model = build_model(config, num_classes=data.num_classes, in_channels=data.in_channels)
    slots = build_losses(config, model, data.num_classes)
    record = GradShare(slots, 1, gated=placement == "gate")
    _, evaluate = build_augmentations(config, data, torch.device("cpu"))
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))
    model.train()
    feature, attention = [], []
    for b in range(batches):
        index = order[b * config.batch_size : (b + 1) * config.batch_size]
        x = evaluate(to_float_images(data.train.images[index]))
        y = data.train.labels[index]
        out = model(x)
        terms = [s.loss.terms(getattr(out, s.loss.consumes), y) for s in slots]
        point = record.record(out, terms, step=b)
        feature.append(point["gshare_cc"])
        if placement == "gate":
            attention.append(point["gshare_cc_att"])
    result = {"feature_map": statistics.median(feature)}
    if attention:
        result["attention"] = statistics.median(attention)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,mnist5k,finegrained,folder")
    parser.add_argument("--seeds", type=common.positive_int, default=3)
    parser.add_argument("--batches", type=common.positive_int, default=5)
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "cc_grad_share.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from chanloss.run.builders import build_data

    rows = []
    for dataset in args.datasets.split(","):
        data = build_data(config_for(dataset, "gate", "ratio", 0))
        for placement in PLACEMENTS:
            for form in FORMS:
                per_seed = [
                    shares(dataset, placement, form, seed, args.batches, data)
                    for seed in range(args.seeds)
                ]
                row = {
                    "dataset": dataset,
                    "placement": placement,
                    "form": form,
                    "weight": DEFAULT_WEIGHT,
                    "feature_map": statistics.median(s["feature_map"] for s in per_seed),
                    "feature_map_seeds": [s["feature_map"] for s in per_seed],
                }
                if placement == "gate":
                    row["attention"] = statistics.median(s["attention"] for s in per_seed)
                rows.append(row)
                common.log(f"{dataset} {placement} {form}: share {row['feature_map']:.3g}")
    common.write_json(
        args.out,
        {
            "benchmark": "CC-Loss gradient share on the feature map at initialisation, "
            f"weight {DEFAULT_WEIGHT:g} (the default)",
            "definition": "||d(w cc)/dF|| / ||d ce/dF||, median over batches and seeds",
            "seeds": args.seeds,
            "batches": args.batches,
            "recipes": {d: RECIPES[d]["model"] for d in args.datasets.split(",")},
            "machine": common.machine_info("cpu"),
            "rows": rows,
        },
    )
    common.log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
