"""How the forward + backward time of CC-Loss and MC-Loss grows with batch, channels and classes.

    python benchmarks/bench_scaling.py            # full
    python benchmarks/bench_scaling.py --quick    # two points per sweep

Three sweeps around ``B=64, C=512, 7x7, K=100`` (features after a ReLU, default parameters,
training mode): batch ``B``; channels ``C``; classes ``K`` (at C=2048, so MC-Loss has a channel
per class up to K=1000). CC and MC are timed interleaved at every point (median and quartiles
of ``--rounds`` after ``--warmup``) into ``benchmarks/results/scaling_<device>.json``, with a
log-log plot (a panel per sweep, quartile bands) in ``scaling_<device>.png`` beside it.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

from chanloss.core.atomic import write_png  # noqa: E402
from chanloss.losses import create_loss  # noqa: E402

NAME = "scaling"
LOSS_NAMES = ("cc", "mc")
BASE = {"B": 64, "C": 512, "H": 7, "W": 7, "K": 100}
SWEEPS: dict[str, dict[str, Any]] = {
    "B": {"values": [16, 32, 64, 128, 256, 512], "quick": [16, 64], "fixed": {}},
    "C": {"values": [128, 256, 512, 1024, 2048], "quick": [128, 512], "fixed": {}},
    "K": {"values": [10, 50, 100, 200, 500, 1000], "quick": [10, 100], "fixed": {"C": 2048}},
}
LABELS = {"B": "batch size B", "C": "channels C", "K": "classes K"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser, default_threads=1)
    parser.add_argument("--rounds", type=common.positive_int, default=None, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per point")
    for key in SWEEPS:
        parser.add_argument(
            f"--{key.lower()}-values",
            dest=f"{key}_values",
            type=common.int_list,
            default=None,
            help=f"comma-separated {LABELS[key]} values (default {SWEEPS[key]['values']})",
        )
    parser.add_argument("--no-plot", action="store_true", help="write the JSON only")
    return parser


def measure(shape: dict[str, int], rounds: int, warmup: int, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    b, c, h, w, k = (shape[key] for key in ("B", "C", "H", "W", "K"))
    x = torch.randn(b, c, h, w, generator=gen).relu_().to(device).requires_grad_(True)
    y = torch.randint(0, k, (b,), generator=gen).to(device)
    fns = {}
    for name in LOSS_NAMES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MC-Loss warns about one-channel groups (C < 2K)
            context = {"num_classes": k, "num_channels": c}
            loss = create_loss(name, context=context, **common.LOSS_OPTIONS.get(name, {}))
        loss = loss.to(device).train()

        def step(loss: torch.nn.Module = loss) -> None:
            x.grad = None
            loss.zero_grad(set_to_none=True)
            loss(x, y).backward()

        fns[name] = step
    samples = common.time_interleaved(fns, rounds=rounds, warmup=warmup, device=device)
    return {name: common.stats(s) for name, s in samples.items()}


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = payload["sweeps"]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(4.2 * len(sweeps), 3.8), squeeze=False)
    for ax, (key, sweep) in zip(axes[0], sweeps.items(), strict=True):
        xs = [p["value"] for p in sweep["points"]]
        for name in LOSS_NAMES:
            med = [p["time"][name]["median_ms"] for p in sweep["points"]]
            lo = [p["time"][name]["p25_ms"] for p in sweep["points"]]
            hi = [p["time"][name]["p75_ms"] for p in sweep["points"]]
            ax.plot(xs, med, marker="o", label=f"{name.upper()}-Loss")
            ax.fill_between(xs, lo, hi, alpha=0.2)
        fixed = ", ".join(f"{k}={v}" for k, v in sweep["fixed"].items())
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(v) for v in xs])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
        ax.set_xlabel(LABELS[key])
        ax.set_ylabel("forward + backward (ms)")
        ax.set_title(fixed, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    m = payload["machine"]
    fig.suptitle(
        f"CC-Loss / MC-Loss time, {m.get('gpu') or m['cpu_model']}, "
        f"{m['torch_threads']} thread(s), torch {m['torch']}",
        fontsize=10,
    )
    fig.tight_layout()
    write_png(fig, path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = common.setup(args)
    rounds = args.rounds or (2 if args.quick else 15)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    info = common.machine_info(device)
    common.log(f"{common.describe(info)}; {rounds} rounds after {warmup} warm-up calls")
    sweeps: dict[str, Any] = {}
    for key, spec in SWEEPS.items():
        values = getattr(args, f"{key}_values") or (spec["quick"] if args.quick else spec["values"])
        fixed = {**BASE, **spec["fixed"]}
        fixed.pop(key)
        points = []
        for value in values:
            shape = {**fixed, key: value}
            if shape["C"] < shape["K"]:
                common.log(f"  {key}={value}: skipped (C={shape['C']} < K={shape['K']})")
                continue
            times = measure(shape, rounds, warmup, device)
            points.append({"value": value, "shape": shape, "time": times})
            common.log(
                f"  {key}={value:<5} "
                + "  ".join(f"{n} {times[n]['median_ms']:9.3f} ms" for n in LOSS_NAMES)
            )
        sweeps[key] = {"fixed": fixed, "points": points}
    payload = {
        "benchmark": "CC-Loss and MC-Loss forward+backward time vs B, C, K",
        "machine": info,
        "quick": args.quick,
        "rounds": rounds,
        "warmup": warmup,
        "losses": list(LOSS_NAMES),
        "sweeps": sweeps,
    }
    out = args.out or common.default_out(NAME, device, args.quick)
    common.write_json(out, payload, say=True)
    if not args.no_plot:
        png = out.with_suffix(".png")
        plot(payload, png)
        payload["plot"] = png.name
        common.write_json(out, payload)
        common.log(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
