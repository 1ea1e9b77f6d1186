"""MC-Loss with uneven groups: one mean over all groups (``pooled``) against the authors'
ResNet-50 averaging (``per_size``), and the two readings of the paper's lambda.

Usage: ``python benchmarks/bench_mc_groups.py [--out PATH]``

For 2048 channels and 200 classes (152 groups of 10 channels, 48 of 11: ResNet-50 on CUB),
seeded normal features ``(B, 2048, 14, 14)`` give: ``div`` under both ``group_average``
values; the ``div`` gradient norm on the 10- and the 11-channel groups and the ratio
``per_size / pooled``; the channels kept per group size by ``drop=4`` and ``keep_ratio=2/3``;
``MCLoss.from_paper`` weights under the ``"equation"`` and ``"code"`` readings for the
authors' VGG16 (600 channels) and ResNet-50 settings. Deterministic; docs/mc-loss.md quotes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

from chanloss.losses import MCLoss  # noqa: E402

K, C, Q = 200, 2048, 10
SPLIT = (K - C % K) * Q  # first channel of the 11-channel groups (1520)


def measure(batch: int, size: int, seed: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, C, size, size, generator=gen, dtype=torch.float64)
    y = torch.randint(0, K, (batch,), generator=gen)
    out: dict[str, Any] = {}
    grads = {}
    for average in ("pooled", "per_size"):
        loss = MCLoss(num_classes=K, num_channels=C, group_average=average).eval()
        z = x.clone().requires_grad_(True)
        div = loss.terms(z, y)["div"]
        (g,) = torch.autograd.grad(div, z)
        grads[average] = g
        out[average] = {
            "div": float(div.detach()),
            "grad_norm_10": float(g[:, :SPLIT].norm()),
            "grad_norm_11": float(g[:, SPLIT:].norm()),
        }
    ratio = grads["per_size"].norm(dim=(2, 3)) / grads["pooled"].norm(dim=(2, 3))
    out["grad_ratio_per_size_over_pooled"] = {
        "10": [float(ratio[:, :SPLIT].min()), float(ratio[:, :SPLIT].max())],
        "11": [float(ratio[:, SPLIT:].min()), float(ratio[:, SPLIT:].max())],
    }
    return out


def masks() -> dict[str, Any]:
    out = {}
    for label, kwargs in (("keep_ratio=2/3", {}), ("drop=4", {"drop": 4})):
        keep = MCLoss(num_classes=K, num_channels=C, **kwargs).group_keep
        out[label] = {"10": sorted(set(keep[:152])), "11": sorted(set(keep[152:]))}
    return out


def readings() -> list[dict[str, Any]]:
    rows = []
    for setting, channels, mu, lam in (
        ("VGG16, 600 channels, authors' code alpha=1.5 beta=20", 600, 1.5, 20 / 1.5),
        ("ResNet-50, 2048 channels, MC_ResNet50.py mu=0.0005 lambda=10", 2048, 0.0005, 10.0),
    ):
        row: dict[str, Any] = {"setting": setting, "mu": mu, "lam": lam}
        for reading in ("equation", "code"):
            w = MCLoss.from_paper(
                mu=mu, lam=lam, reading=reading, num_classes=K, num_channels=channels
            ).weights
            row[reading] = {"alpha": w["dis"], "beta": w["div"]}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=common.positive_int, default=4)
    parser.add_argument("--size", type=common.positive_int, default=14, help="H = W")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "mc_groups.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    payload = {
        "benchmark": "mc_groups",
        "layout": {"num_classes": K, "num_channels": C, "groups": {"10": 152, "11": 48}},
        "features": {"batch": args.batch, "size": args.size, "seed": args.seed},
        "div": measure(args.batch, args.size, args.seed),
        "masks": masks(),
        "from_paper": readings(),
        "commit": common.git_commit(),
    }
    common.write_json(args.out, payload, say=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
