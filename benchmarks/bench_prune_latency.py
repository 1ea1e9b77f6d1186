"""CPU latency of ResNet-20 (option A and B shortcuts) before and after group pruning to 2x
and 4x fewer MACs, at 1 and 2 threads.

The pruned structures are the ones ``chanloss prune`` builds (whole Torch-Pruning groups,
residual streams included, one keep ratio for all groups, widths in multiples of
``round_to``: 8, the default, and 1 for comparison); which channels are kept does not change
the time, so the model is freshly initialised. The variants are timed interleaved (round by
round, rotating order) so that load from other processes hits them alike; reported: the
ratio of the medians at batch 1 and 64, the ratio of the minima (the least disturbed call),
and the 1-minute load average before and after.

    nice -n 5 python benchmarks/bench_prune_latency.py     # -> results/prune_latency_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, stats, time_interleaved, write_json  # noqa: E402


def pruned_variants(shortcut: str) -> tuple[dict[str, torch.nn.Module], dict[str, object]]:
    """The original ResNet-20 and its 2x/4x group-pruned copies (round_to 8 and 1)."""
    from chanloss.models import create_model
    from chanloss.pruning.graph import count_macs, find_groups, plan_counts, prune_groups

    torch.manual_seed(0)
    base = create_model("resnet20", num_classes=10, in_channels=3, shortcut=shortcut).eval()
    example = torch.zeros(1, 3, 32, 32)
    groups = [g for g in find_groups(base, example) if not g.is_feature]
    models = {"original": base}
    info: dict[str, object] = {"macs": {"original": count_macs(base, example)[0]}, "plan_s": {}}
    for speedup in (2.0, 4.0):
        for round_to in (8, 1):
            started = time.perf_counter()
            counts = plan_counts(
                base, groups, speedup, example, round_to=round_to, mc_classes=None
            )[0]
            pruned = copy.deepcopy(base)
            prune_groups(pruned, {n: range(c) for n, c in counts.items()}, example, None)
            name = f"{speedup:g}x/round{round_to}"
            info["plan_s"][name] = time.perf_counter() - started  # type: ignore[index]
            models[name] = pruned.eval()
            info["macs"][name] = count_macs(pruned, example)[0]  # type: ignore[index]
            info.setdefault("widths", {})[name] = counts  # type: ignore[union-attr]
    return models, info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "prune_latency_cpu.json")
    args = parser.parse_args(argv)
    result: dict[str, object] = {
        "benchmark": "prune_latency",
        "machine": machine_info("cpu"),
        "load_before": os.getloadavg()[0],
        "rounds": args.rounds,
        "shortcuts": {},
    }
    for shortcut in ("A", "B"):
        models, info = pruned_variants(shortcut)
        entry: dict[str, object] = {**info}
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            with torch.no_grad():
                for batch in (1, 64):
                    x = torch.randn(batch, 3, 32, 32)
                    fns = {name: (lambda m=m, x=x: m(x)) for name, m in models.items()}
                    samples = time_interleaved(fns, rounds=args.rounds, warmup=3)
                    timing = {name: stats(s) for name, s in samples.items()}
                    base = timing["original"]
                    ratios = {
                        n: {
                            "median": base["median_ms"] / t["median_ms"],
                            "min": base["min_ms"] / t["min_ms"],
                        }
                        for n, t in timing.items()
                        if n != "original"
                    }
                    entry[f"threads{threads}/batch{batch}"] = {"timing": timing, "ratio": ratios}
                    print(
                        f"ResNet-20 ({shortcut}) {threads} thread(s) batch {batch}: "
                        + ", ".join(
                            f"{n} {r['median']:.2f}x (min {r['min']:.2f}x)"
                            for n, r in ratios.items()
                        ),
                        flush=True,
                    )
        result["shortcuts"][shortcut] = entry  # type: ignore[index]
    result["load_after"] = os.getloadavg()[0]
    write_json(args.out, result)
    print(
        f"wrote {args.out} (1-min load {result['load_before']:.2f} -> {result['load_after']:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
