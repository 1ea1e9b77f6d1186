"""Forward + backward time and peak memory of every registered loss at realistic sizes.

    python benchmarks/bench_losses.py             # full: 30 rounds, 1 thread
    python benchmarks/bench_losses.py --quick     # 3 rounds, a few seconds
    python benchmarks/bench_losses.py --device cuda

Each loss of ``chanloss.losses.LOSSES`` on the input it consumes: ``features`` (CC, MC) after a
ReLU at ``B=64, C=512, 7x7, K=100`` and the MC-Loss paper's ``B=32, C=600, 14x14, K=200``;
``embedding`` losses on ``(128, 512)`` and ``logits`` losses on ``(B, K)``, K in 10, 100, 1000.
The losses of a shape are timed interleaved (``loss(inputs, labels).backward()``, training
mode; peak memory by ``_common.peak_bytes``), embedding/logit losses also as a ratio to CE at
the same ``K``. A loss whose constructor rejects a shape is listed as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

from chanloss.losses import LOSSES, create_loss  # noqa: E402

NAME = "losses"
FEATURE_SHAPES = ((64, 512, 7, 7, 100), (32, 600, 14, 14, 200))  # B, C, H, W, K
VECTOR_BATCH = 128
EMBEDDING_DIM = 512
CLASS_COUNTS = (10, 100, 1000)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, default_threads=1)
    parser.add_argument("--rounds", type=common.positive_int, default=None, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per loss")
    parser.add_argument(
        "--losses", type=lambda s: s.split(","), default=None, help="comma-separated subset"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    return parser


def _inputs(
    consumes: str, shape: dict[str, int], device: torch.device, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    b, k = shape["B"], shape["K"]
    if consumes == "features":
        size: tuple[int, ...] = (b, shape["C"], shape["H"], shape["W"])
        x = torch.randn(size, generator=gen).relu_()
    elif consumes == "embedding":
        x = torch.randn(b, shape["D"], generator=gen)
    else:
        x = 2.0 * torch.randn(b, k, generator=gen)
    y = torch.randint(0, k, (b,), generator=gen)
    return x.to(device).requires_grad_(True), y.to(device)


def _case(
    name: str, shape: dict[str, int], device: torch.device
) -> tuple[Callable[[], None], Callable[[], None], dict[str, Any]] | str:
    """``(step, reset, description)`` for one loss at one shape, or why it was skipped."""
    context = {
        "num_classes": shape["K"],
        "num_channels": shape.get("C", EMBEDDING_DIM),
        "embedding_dim": shape.get("D", EMBEDDING_DIM),
    }
    try:
        loss = create_loss(name, context=context, **common.LOSS_OPTIONS.get(name, {}))
        loss = loss.to(device).train()
    except ValueError as err:
        return f"{type(err).__name__}: {err}"
    gen = torch.Generator().manual_seed(0)
    x, y = _inputs(loss.consumes, shape, device, gen)

    def reset() -> None:
        x.grad = None
        loss.zero_grad(set_to_none=True)

    def step() -> None:
        reset()
        loss(x, y).backward()

    params = sum(p.numel() for p in loss.parameters())
    return step, reset, {"input_shape": list(x.shape), "loss_parameters": params}


@functools.cache
def consumes(name: str) -> str:
    """What the loss reads (``features``, ``embedding``, ``logits``) as this benchmark builds it."""
    context = {"num_classes": 4, "num_channels": 8, "embedding_dim": 8}
    return create_loss(name, context=context, **common.LOSS_OPTIONS.get(name, {})).consumes


def groups(names: list[str]) -> list[tuple[str, dict[str, int], list[str]]]:
    """``(group label, shape, losses)``: the features shapes, then every K for the rest."""
    maps = [n for n in names if consumes(n) == "features"]
    vectors = [n for n in names if consumes(n) != "features"]
    out = [
        (f"features B={b} C={c} {h}x{w} K={k}", {"B": b, "C": c, "H": h, "W": w, "K": k}, maps)
        for b, c, h, w, k in FEATURE_SHAPES
        if maps
    ]
    label = f"logits/embedding B={VECTOR_BATCH} D={EMBEDDING_DIM}"
    shape = {"B": VECTOR_BATCH, "D": EMBEDDING_DIM}
    return out + [(f"{label} K={k}", {**shape, "K": k}, vectors) for k in CLASS_COUNTS if vectors]


def _summary(row: dict[str, Any]) -> str:
    if "skipped" in row:
        return f"skipped ({row['skipped']})"
    t = row["time"]
    mem = f", {row['peak_bytes'] / 2**20:.2f} MiB" if "peak_bytes" in row else ""
    ratio = f", x{row['ratio_to_ce']:.2f} of CE" if "ratio_to_ce" in row else ""
    return f"{t['median_ms']:.3f} ({t['p25_ms']:.3f}-{t['p75_ms']:.3f}){mem}{ratio}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = common.setup(args)
    rounds = args.rounds or (3 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    registered = sorted(LOSSES, key=lambda n: (n != "ce", n))
    names = args.losses or registered
    unknown = sorted(set(names) - set(LOSSES))
    if unknown:
        raise SystemExit(f"--losses: unknown {unknown}; registered: {registered}")
    info = common.machine_info(device)
    common.log(f"{common.describe(info)}; {rounds} rounds after {warmup} warm-up calls")
    rows: list[dict[str, Any]] = []
    for label, shape, members in groups(names):
        cases = {name: _case(name, shape, device) for name in members}
        timed = {name: case[0] for name, case in cases.items() if not isinstance(case, str)}
        samples = common.time_interleaved(timed, rounds=rounds, warmup=warmup, device=device)
        ce_median = common.stats(samples["ce"])["median_ms"] if "ce" in samples else None
        common.log(f"\n{label}\n  {'loss':<16} median ms (p25-p75), peak MiB, x CE")
        for name, case in cases.items():
            row = {"group": label, "loss": name, "consumes": consumes(name), "shape": shape}
            if isinstance(case, str):
                row["skipped"] = case
            else:
                step, reset, extra = case
                row.update(extra, time=common.stats(samples[name]))
                if not args.no_memory:
                    row["peak_bytes"] = common.peak_bytes(step, reset=reset, device=device)
                if ce_median is not None and row["consumes"] != "features":
                    row["ratio_to_ce"] = round(row["time"]["median_ms"] / ce_median, 3)
            rows.append(row)
            common.log(f"  {name:<16} {_summary(row)}")
    return {
        "benchmark": "forward+backward of every registered loss",
        "machine": info,
        "quick": args.quick,
        "rounds": rounds,
        "warmup": warmup,
        "dtype": "float32",
        "time_method": "interleaved rounds per shape; median/quartiles over rounds",
        "memory_method": "see benchmarks/_common.py peak_bytes (separate untimed call)",
        "results": rows,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    payload = run(args)
    out = args.out or common.default_out(NAME, torch.device(args.device), args.quick)
    common.write_json(out, payload, say=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
