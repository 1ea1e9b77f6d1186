"""Training-step time with cross-entropy alone and with CC-Loss or MC-Loss added.

    python benchmarks/bench_train_step.py            # full
    python benchmarks/bench_train_step.py --quick    # 3 rounds

A step is what the trainer does per batch: ``model(x)``, every loss, the weighted sum,
``zero_grad``, ``backward`` and an SGD step (``build_optimizer``; CC-Loss's attention included).
Variants ``ce``, ``ce+cc``, ``ce+mc`` (default loss parameters) on two setups:

- ``resnet20``: 32x32 inputs, batch 128, K = 10 (64 channels: MC-Loss groups of 6 and 7);
- ``vgg16_bn_600``: VGG16-BN widened as in the MC-Loss paper (600 channels for K = 200, 14x14
  map) at 224 px, batch 4, GAP head; ``--quick`` uses 64 px (a smoke test, not the measurement).

The variants of a setup (same seed and batch) are timed interleaved: median and quartiles per
variant, per added loss the ratio of medians to ``ce`` and quartiles of the per-round ratios
(target: at most 10 % overhead).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

from chanloss.config import OptimConfig  # noqa: E402
from chanloss.losses import create_loss, loss_spec  # noqa: E402
from chanloss.losses.objective import MultipleLosses  # noqa: E402
from chanloss.models import create_model  # noqa: E402
from chanloss.run.optim import build_optimizer  # noqa: E402

NAME = "train_step"
TARGET_OVERHEAD = 0.10
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "ce": [{"name": "ce"}],
    "ce+cc": [{"name": "ce"}, {"name": "cc", **common.LOSS_OPTIONS["cc"]}],
    "ce+mc": [{"name": "ce"}, {"name": "mc"}],
}
SETUPS: dict[str, dict[str, Any]] = {
    "resnet20": {
        "model": "resnet20",
        "options": {},
        "num_classes": 10,
        "image_size": 32,
        "batch": 128,
        "rounds": 20,
        "warmup": 3,
        "note": "MC-Loss with K=10 on the 64 unwidened channels (groups of 6 and 7)",
    },
    "vgg16_bn_600": {
        "model": "vgg16_bn",
        "options": {"image_size": 224, "channels_per_class": 3},
        "num_classes": 200,
        "image_size": 224,
        "batch": 4,
        "rounds": 8,
        "warmup": 2,
        "quick_image_size": 64,
        "note": "VGG16-BN widened to 600 channels (3 per class), 14x14 map, GAP head",
    },
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, default_threads=os.cpu_count())
    parser.add_argument(
        "--setups",
        type=lambda s: s.split(","),
        default=list(SETUPS),
        help=f"comma-separated subset of {', '.join(SETUPS)}",
    )
    parser.add_argument("--rounds", type=common.positive_int, default=None, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per variant")
    parser.add_argument(
        "--batch", type=common.positive_int, default=None, help="override every setup's batch"
    )
    return parser


def make_step(
    setup: dict[str, Any], losses: list[dict[str, Any]], x: Tensor, y: Tensor, device: torch.device
) -> tuple[Callable[[], None], int]:
    """One variant: a fresh model (seed 0) with its losses and optimizer; returns the step."""
    torch.manual_seed(0)
    model = create_model(
        setup["model"], num_classes=setup["num_classes"], in_channels=3, **setup["options"]
    ).to(device)
    model.train()
    context = {
        "num_classes": setup["num_classes"],
        "num_channels": int(model.num_features),
        "embedding_dim": int(model.embedding_dim),
    }
    built = [
        create_loss(e["name"], context=context, **{k: v for k, v in e.items() if k != "name"})
        for e in losses
    ]
    objective = MultipleLosses(
        built, takes_generator=[loss_spec(e["name"]).takes_generator for e in losses]
    ).to(device)
    objective.train()
    optimizer = build_optimizer(OptimConfig(lr=0.01), model, built, [None] * len(built))
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        value = objective(model(x), y, generator)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

    return step, sum(p.numel() for p in model.parameters())


def run_setup(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    setup = dict(SETUPS[name])
    if args.batch is not None:
        setup["batch"] = args.batch
    if args.quick and "quick_image_size" in setup:
        setup["image_size"] = setup["quick_image_size"]
        setup["options"] = {**setup["options"], "image_size": setup["image_size"]}
    rounds = args.rounds or (3 if args.quick else setup["rounds"])
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else setup["warmup"])
    gen = torch.Generator().manual_seed(0)
    size = setup["image_size"]
    x = torch.randn(setup["batch"], 3, size, size, generator=gen).to(device)
    y = torch.randint(0, setup["num_classes"], (setup["batch"],), generator=gen).to(device)
    steps, params = {}, 0
    for variant, losses in VARIANTS.items():
        steps[variant], params = make_step(setup, losses, x, y, device)
    samples = common.time_interleaved(steps, rounds=rounds, warmup=warmup, device=device)
    variants = {v: common.stats(s) for v, s in samples.items()}
    overhead = {}
    for variant in VARIANTS:
        if variant == "ce":
            continue
        per_round = [a / b for a, b in zip(samples[variant], samples["ce"], strict=True)]
        ratio = variants[variant]["median_ms"] / variants["ce"]["median_ms"]
        overhead[variant] = {
            "ratio_of_medians": round(ratio, 4),
            "per_round_ratio_median": round(statistics.median(per_round), 4),
            "per_round_ratio_p25": round(common.quantile(per_round, 0.25), 4),
            "per_round_ratio_p75": round(common.quantile(per_round, 0.75), 4),
            "within_target": ratio <= 1.0 + TARGET_OVERHEAD,
        }
    common.log(
        f"\n{name}: {setup['model']} {size}x{size}, batch {setup['batch']}, "
        f"K={setup['num_classes']}, {params:,} parameters, {rounds} rounds"
    )
    for variant, st in variants.items():
        o, extra = overhead.get(variant), ""
        if o is not None:
            extra = (
                f"; x{o['ratio_of_medians']:.3f} of ce (rounds {o['per_round_ratio_p25']:.3f}-"
                f"{o['per_round_ratio_p75']:.3f}), {'meets' if o['within_target'] else 'MISSES'}"
                f" the target <= {1 + TARGET_OVERHEAD:.2f}"
            )
        spread = f"(p25-p75 {st['p25_ms']:.1f}-{st['p75_ms']:.1f})"
        common.log(f"  {variant:<6} {st['median_ms']:.1f} ms {spread}{extra}")
    return {
        "setup": name,
        "model": setup["model"],
        "model_options": setup["options"],
        "num_classes": setup["num_classes"],
        "image_size": size,
        "batch": setup["batch"],
        "model_parameters": params,
        "note": setup["note"],
        "rounds": rounds,
        "warmup": warmup,
        "variants": variants,
        "overhead": overhead,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = sorted(set(args.setups) - set(SETUPS))
    if unknown:
        raise SystemExit(f"--setups: unknown {unknown}; expected some of {list(SETUPS)}")
    device = common.setup(args)
    info = common.machine_info(device)
    common.log(common.describe(info))
    results = [run_setup(name, args, device) for name in args.setups]
    payload = {
        "benchmark": "training step (forward + losses + backward + SGD step): CE vs CE+CC vs CE+MC",
        "machine": info,
        "machine_after": {"load_average": [round(v, 2) for v in os.getloadavg()]},
        "quick": args.quick,
        "target_overhead": TARGET_OVERHEAD,
        "variants": VARIANTS,
        "results": results,
    }
    out = args.out or common.default_out(NAME, device, args.quick)
    common.write_json(out, payload, say=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
