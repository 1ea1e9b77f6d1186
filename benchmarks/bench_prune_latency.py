"""CPU latency of ResNet-20 before and after channel pruning to 2x and 4x fewer MACs.

The pruned structures are the ones ``chanloss prune`` builds (the same per-layer keep ratio,
Torch-Pruning surgery); which channels are kept does not change the time, so the model is
freshly initialised. The variants are timed interleaved (round by round, rotating order) so
that load from other processes hits them alike; at batch 1 and 64 the ratios of the medians
and of the minima (the least disturbed call, the figure to read on a shared machine).

    nice -n 10 python benchmarks/bench_prune_latency.py     # -> results/prune_latency_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, stats, time_interleaved, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from chanloss.models import create_model
    from chanloss.pruning.graph import count_macs, find_prunable, plan_keep_counts, prune_to

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "prune_latency_cpu.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = create_model("resnet20", num_classes=10, in_channels=3).eval()
    example = torch.zeros(1, 3, 32, 32)
    layers = find_prunable(base, example)
    models = {"original": base}
    macs = {"original": count_macs(base, example)[0]}
    for speedup in (2.0, 4.0):
        counts = plan_keep_counts(base, layers, speedup, example, None)[0]
        pruned = copy.deepcopy(base)
        prune_to(
            pruned,
            find_prunable(pruned, example),
            {n: range(c) for n, c in counts.items()},
            example,
        )
        models[f"{speedup:g}x"] = pruned.eval()
        macs[f"{speedup:g}x"] = count_macs(pruned, example)[0]
    result = {"benchmark": "prune_latency", "machine": machine_info("cpu"), "macs": macs}
    with torch.no_grad():
        for batch in (1, 64):
            x = torch.randn(batch, 3, 32, 32)
            fns = {name: (lambda m=m, x=x: m(x)) for name, m in models.items()}
            samples = time_interleaved(fns, rounds=args.rounds, warmup=3)
            timing = {name: stats(s) for name, s in samples.items()}
            result[f"batch{batch}"] = {
                "timing": timing,
                "ratio_2x": timing["original"]["median_ms"] / timing["2x"]["median_ms"],
                "ratio_4x": timing["original"]["median_ms"] / timing["4x"]["median_ms"],
                # the least disturbed call of each: robust to other processes' load
                "ratio_2x_min": timing["original"]["min_ms"] / timing["2x"]["min_ms"],
                "ratio_4x_min": timing["original"]["min_ms"] / timing["4x"]["min_ms"],
            }
            print(
                f"batch {batch}: "
                + ", ".join(f"{n} {t['median_ms']:.2f} ms" for n, t in timing.items())
                + f"; median ratio 2x {result[f'batch{batch}']['ratio_2x']:.2f}, "
                f"4x {result[f'batch{batch}']['ratio_4x']:.2f}; minimum ratio 2x "
                f"{result[f'batch{batch}']['ratio_2x_min']:.2f}, "
                f"4x {result[f'batch{batch}']['ratio_4x_min']:.2f}",
                flush=True,
            )
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
