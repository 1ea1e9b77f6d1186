"""CC-Loss on the CPU: time and peak memory of forward + backward against the batch size.

Usage: ``python benchmarks/bench_cc_loss.py [--quick] [--out PATH]``

For B in 64 ... 1024 at C = 512 channels and 7x7 maps:

* ``step``: ``CCLoss(features, labels)`` forward + backward (SE attention included): median and
  minimum wall time over ``--repeats`` after a warm-up, and peak memory (dominated by the
  ``O(B C H W)`` features' gradient and GAP backward);
* ``pairs``: the pairwise stage alone (attention ``(B, C)`` -> cc), where the ``O(B^2)``
  distances live, for our Gram-matrix form and a naive ``(B, B, C)`` broadcasting form (up to
  ``--naive-max-batch``).

Peak memory: :func:`_common.peak_bytes`. ``bytes/pair`` = pairwise peak / B^2: ours is
``O(B^2 + B C)``, falling towards about 22; the naive form's is ``8 C``. ``--threads 1`` steadies
times on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

from chanloss.losses import CCLoss  # noqa: E402

DEFAULT_OUT = common.RESULTS_DIR / "cc_loss_cpu.json"


def seconds(
    fn: Callable[[], object], reset: Callable[[], object], repeats: int
) -> dict[str, float]:
    """Minimum and median wall time of ``fn`` over ``repeats`` runs after one warm-up."""
    reset()
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        reset()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"min": min(times), "median": statistics.median(times)}


def naive_cc(a: Tensor, labels: Tensor, eps: float) -> Tensor:
    """The same cc (mean pair reduction) with ``(B, B, C)`` broadcast differences."""
    dist = ((a[:, None, :] - a[None, :, :]) ** 2).sum(dim=-1)
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool)
    neg = ~same
    intra = (dist * pos).sum() / pos.sum().clamp_min(1)
    inter = (dist * neg).sum() / neg.sum().clamp_min(1)
    return intra / (inter + eps)


def pair_stage(
    loss: CCLoss, batch: int, channels: int, labels: Tensor, naive: bool
) -> tuple[Callable[[], None], Callable[[], None]]:
    gen = torch.Generator().manual_seed(batch)
    a = torch.rand(batch, channels, generator=gen).requires_grad_()

    def run() -> None:
        value = naive_cc(a, labels, loss.eps) if naive else loss._cc(a, labels)
        value.backward()

    def reset() -> None:
        a.grad = None

    return run, reset


def measure_batch(batch: int, channels: int, hw: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    loss = CCLoss(num_channels=channels, placement="branch", form="ratio")  # as recorded
    labels = torch.arange(batch) % args.classes
    x = torch.randn(batch, channels, hw, hw).relu_().requires_grad_()

    def step() -> None:
        loss(x, labels).backward()

    def reset() -> None:
        x.grad = None
        loss.zero_grad(set_to_none=True)

    ours = pair_stage(loss, batch, channels, labels, naive=False)
    row: dict = {
        "batch": batch,
        "channels": channels,
        "step_seconds": seconds(step, reset, args.repeats),
        "step_peak_bytes": common.peak_bytes(step, reset=reset),
        "pairs_seconds": seconds(*ours, args.repeats),
        "pairs_peak_bytes": common.peak_bytes(ours[0], reset=ours[1]),
    }
    row["pairs_bytes_per_pair"] = row["pairs_peak_bytes"] / batch**2
    if batch <= args.naive_max_batch:
        naive = pair_stage(loss, batch, channels, labels, naive=True)
        a = torch.rand(batch, channels, generator=torch.Generator().manual_seed(batch))
        check = (loss._cc(a, labels).item(), naive_cc(a, labels, loss.eps).item())
        assert abs(check[0] - check[1]) <= 1e-4 * abs(check[1]), check
        row["naive_pairs_seconds"] = seconds(*naive, args.repeats)
        row["naive_pairs_peak_bytes"] = common.peak_bytes(naive[0], reset=naive[1])
        row["naive_pairs_bytes_per_pair"] = row["naive_pairs_peak_bytes"] / batch**2
        row["naive_over_ours_peak"] = row["naive_pairs_peak_bytes"] / row["pairs_peak_bytes"]
    else:
        row["naive_pairs_skipped"] = f"B > --naive-max-batch {args.naive_max_batch}"
    return row


def mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


def summary(r: dict) -> str:
    """One console line of a row: minimum times, peaks, bytes per pair, naive against ours."""
    naive = ""
    if "naive_pairs_seconds" in r:
        naive = (
            f"; naive {1e3 * r['naive_pairs_seconds']['min']:.1f} ms, "
            f"{mib(r['naive_pairs_peak_bytes'])}, x{r['naive_over_ours_peak']:.1f} of ours"
        )
    return (
        f"B={r['batch']:<5} C={r['channels']:<5} step {1e3 * r['step_seconds']['min']:.1f} ms, "
        f"{mib(r['step_peak_bytes'])}; pairs {1e3 * r['pairs_seconds']['min']:.2f} ms, "
        f"{mib(r['pairs_peak_bytes'])}, {r['pairs_bytes_per_pair']:.1f} B/pair{naive}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B in 64, 256; 1 repeat")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--hw", type=int, default=7)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--naive-max-batch", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [64, 256] if args.quick else [64, 128, 256, 512, 1024]
    sweep_channels = [128, 512] if args.quick else [128, 512, 2048]
    sweep_batch = 128 if args.quick else 256
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.naive_max_batch = args.naive_max_batch or (256 if args.quick else 512)

    rows = [measure_batch(b, args.channels, args.hw, args) for b in sizes]
    sweep = [measure_batch(sweep_batch, c, args.hw, args) for c in sweep_channels]
    info = common.machine_info("cpu")
    common.log(f"{common.describe(info)}; C={args.channels}, {args.hw}x{args.hw}")
    for row in [*rows, *sweep]:
        common.log(summary(row))
    result = {
        "benchmark": "CCLoss forward+backward, CPU",
        **{key: info[key] for key in ("torch", "cpu_model", "cpu_count", "torch_threads")},
        "load_average_1m_5m_15m": info["load_average"],
        "quick": args.quick,
        "channels": args.channels,
        "height_width": [args.hw, args.hw],
        "classes": args.classes,
        "repeats": args.repeats,
        "dtype": "float32",
        "memory_method": (
            "torch.profiler profile_memory=True allocation records; peak of the running sum "
            "of allocated minus freed bytes during the call (tensor storage only, inputs "
            "excluded), measured in a separate untimed run"
        ),
        "time_method": (
            "wall time of forward+backward after one warm-up, min and median over repeats "
            "(the table prints the min; the machine was shared, so medians are noisy)"
        ),
        "batch_sweep": rows,
        "channel_sweep": sweep,
    }
    common.write_json(args.out, result, say=True)


if __name__ == "__main__":
    main()
