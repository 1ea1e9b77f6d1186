"""CPU timing of MC-Loss forward + backward against the authors' program structure and a floor.

    python benchmarks/bench_mc_loss.py            # full run
    python benchmarks/bench_mc_loss.py --quick    # a few rounds

Timed interleaved per shape: ``mc_loss`` (``chanloss.losses.MCLoss``, training mode, a mask
drawn every step); ``reference`` (``tools/reference_mc_loss.py``, the structure of the authors'
code); ``plain`` (a ``view(...).amax()`` version, for context); ``floor`` (a softmax over
``H * W`` forward + backward, the least the diversity term needs). Per clock of
``_common.time_clocks`` (thread CPU time, primary with ``--threads 1``; wall time): medians and
the ratios ``reference / mc_loss`` (target >= 3) and ``mc_loss / floor`` (target <= 3), in
``benchmarks/results/mc_loss_cpu.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tools"))  # reference_mc_loss

import _common as common  # noqa: E402
from reference_mc_loss import reference_mc_loss  # noqa: E402

from chanloss.losses.mc_loss import MCLoss  # noqa: E402

RESULTS = common.RESULTS_DIR / "mc_loss_cpu.json"
SHAPES = ((32, 600, 14, 14, 200), (8, 1000, 14, 14, 100))  # B, C, H, W, K
TARGET_SPEEDUP = 3.0
TARGET_FLOOR_RATIO = 3.0


def plain_mc_loss(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The direct version: reshape to groups, ``amax``, autograd for the backward."""
    b, c = x.shape[:2]
    s = c // k
    flat = x.reshape(b, c, -1)
    sums = torch.softmax(flat, -1).view(b, k, s, -1).amax(2).sum(-1)
    scores = (flat * mask.view(-1, c, 1)).view(b, k, s, -1).amax(2).mean(-1)
    return 1.5 * F.cross_entropy(scores, y) + 20.0 * (1.0 - (sums / s).mean())


def check_agreement(loss: MCLoss, x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest gradient difference between the library and the reference on one shared mask."""
    mask = loss.draw_mask(1, generator=torch.Generator().manual_seed(0))[0]
    keep = loss.group_keep[0]
    xa = x.detach().clone().requires_grad_(True)
    xb = x.detach().clone().requires_grad_(True)
    va = loss(xa, y, mask=mask)
    vb = reference_mc_loss(
        xb, y, num_classes=loss.num_classes, keep=keep, mask=mask[..., None, None]
    )
    va.backward()
    vb.backward()
    if not torch.allclose(va, vb, rtol=1e-5, atol=1e-6):
        raise SystemExit(f"library and reference disagree: {va.item()} vs {vb.item()}")
    diff = float((xa.grad - xb.grad).abs().max())
    if diff > 1e-6:
        raise SystemExit(f"library and reference gradients differ by {diff}")
    return diff


def bench_shape(b: int, c: int, h: int, w: int, k: int, rounds: int, warmup: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, h, w, generator=gen).requires_grad_(True)
    y = torch.randint(0, k, (b,), generator=gen)
    upstream = torch.randn(b, c, h * w, generator=gen)
    loss = MCLoss(num_classes=k, num_channels=c).train()
    keep = loss.group_keep[0]
    mask_gen = torch.Generator().manual_seed(1)
    max_grad_diff = check_agreement(loss, x, y)

    def timed(forward: Callable[[], torch.Tensor], grad: torch.Tensor | None = None) -> Callable:
        def run() -> None:
            x.grad = None
            forward().backward(grad)

        return run

    fns = {
        "mc_loss": timed(lambda: loss(x, y, generator=mask_gen)),
        "reference": timed(lambda: reference_mc_loss(x, y, num_classes=k, keep=keep)),
        "plain": timed(lambda: plain_mc_loss(x, y, loss.draw_mask(1, generator=mask_gen), k)),
        "floor": timed(lambda: torch.softmax(x.view(b, c, h * w), -1), upstream),
    }
    samples = common.time_clocks(fns, rounds=rounds, warmup=warmup, reps=3, prime=True)
    out: dict = {
        "shape": {"B": b, "C": c, "H": h, "W": w, "K": k, "keep_per_group": keep},
        "max_grad_diff_vs_reference": max_grad_diff,
    }
    for clock in ("cpu", "wall"):
        st = {name: common.stats(v) for name, v in samples[clock].items()}
        med = {name: s["median_ms"] for name, s in st.items()}
        out[clock] = {
            **{
                key: {n: s[key] for n, s in st.items()} for key in ("median_ms", "p25_ms", "p75_ms")
            },
            "speedup_vs_reference": round(med["reference"] / med["mc_loss"], 3),
            "ratio_to_floor": round(med["mc_loss"] / med["floor"], 3),
            "plain_speedup_vs_reference": round(med["reference"] / med["plain"], 3),
            "plain_ratio_to_floor": round(med["plain"] / med["floor"], 3),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few rounds only")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per variant")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (5 if args.quick else 25)
    warmup = 2 if args.quick else 5
    info = common.machine_info("cpu")
    common.log(f"{common.describe(info)}; {rounds} rounds")
    results = [bench_shape(*shape, rounds, warmup) for shape in SHAPES]
    for r in results:
        for clock in ("cpu", "wall"):
            m, x = r[clock]["median_ms"], r[clock]
            common.log(
                f"B={r['shape']['B']} C={r['shape']['C']} K={r['shape']['K']} [{clock}] "
                + ", ".join(f"{name} {ms:.2f} ms" for name, ms in m.items())
                + f" | reference/mc_loss {x['speedup_vs_reference']:.2f}x (target >= "
                f"{TARGET_SPEEDUP:g}), mc_loss/floor {x['ratio_to_floor']:.2f}x (target <= "
                f"{TARGET_FLOOR_RATIO:g})"
            )
    payload = {
        "benchmark": "MC-Loss forward+backward, CPU",
        "torch": info["torch"],
        "python": info["python"],
        "cpu": info["cpu_model"],
        "cpu_count": info["cpu_count"],
        "threads": info["torch_threads"],
        "quick": args.quick,
        "rounds": rounds,
        "warmup": warmup,
        "load_average_before": info["load_average"],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "targets": {
            "speedup_vs_reference_at_least": TARGET_SPEEDUP,
            "ratio_to_floor_at_most": TARGET_FLOOR_RATIO,
        },
        "clocks": {
            "cpu": "time.thread_time of the timing thread (all work with --threads 1)",
            "wall": "time.perf_counter",
        },
        "results": results,
        "timestamp": info["timestamp"],
    }
    common.write_json(args.out, payload, say=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
