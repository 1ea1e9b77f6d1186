"""CPU latency of ResNet-20 (option A and B shortcuts) before and after group pruning to 2x
and 4x fewer MACs, at 1 and 2 threads.

    nice -n 5 python benchmarks/bench_prune_latency.py     # -> results/prune_latency_cpu.json

The pruned structures are those ``chanloss prune`` builds (whole Torch-Pruning groups, one keep
ratio, widths in multiples of ``round_to`` 8, and 1 for comparison) on a fresh model (which
channels are kept does not change the time). Timed interleaved in rotating order; reported:
the ratio of the medians at batch 1 and 64, of the minima, and the load average around it.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402


def pruned_variants(shortcut: str) -> tuple[dict[str, torch.nn.Module], dict[str, Any]]:
    """The original ResNet-20 and its 2x/4x group-pruned copies (round_to 8 and 1)."""
    from chanloss.models import create_model
    from chanloss.pruning.graph import count_macs, find_groups, plan_counts, prune_groups

    torch.manual_seed(0)
    base = create_model("resnet20", num_classes=10, in_channels=3, shortcut=shortcut).eval()
    example = torch.zeros(1, 3, 32, 32)
    groups = [g for g in find_groups(base, example) if not g.is_feature]
    models = {"original": base}
    macs, plan_s, widths = {"original": count_macs(base, example)[0]}, {}, {}
    for speedup, round_to in itertools.product((2.0, 4.0), (8, 1)):
        started = time.perf_counter()
        counts = plan_counts(base, groups, speedup, example, round_to=round_to, mc_classes=None)[0]
        pruned = copy.deepcopy(base)
        prune_groups(pruned, {n: range(c) for n, c in counts.items()}, example, None)
        name = f"{speedup:g}x/round{round_to}"
        plan_s[name] = time.perf_counter() - started
        models[name] = pruned.eval()
        macs[name], widths[name] = count_macs(pruned, example)[0], counts
    return models, {"macs": macs, "plan_s": plan_s, "widths": widths}


def measure(models: dict[str, torch.nn.Module], threads: int, batch: int, rounds: int) -> dict:
    """Interleaved forward times at ``threads`` and ``batch``, and each pruned model's speed-up
    over the original (ratio of medians and of minima)."""
    torch.set_num_threads(threads)
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        fns = {name: functools.partial(model, x) for name, model in models.items()}
        samples = common.time_interleaved(fns, rounds=rounds, warmup=3)
    timing = {name: common.stats(s) for name, s in samples.items()}
    base = timing["original"]
    ratio = {
        n: {"median": base["median_ms"] / t["median_ms"], "min": base["min_ms"] / t["min_ms"]}
        for n, t in timing.items()
        if n != "original"
    }
    return {"timing": timing, "ratio": ratio}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "prune_latency_cpu.json")
    args = parser.parse_args(argv)
    shortcuts: dict[str, Any] = {}
    result = {
        "benchmark": "prune_latency",
        "machine": common.machine_info("cpu"),
        "load_before": os.getloadavg()[0],
        "rounds": args.rounds,
        "shortcuts": shortcuts,
    }
    for shortcut in ("A", "B"):
        models, shortcuts[shortcut] = pruned_variants(shortcut)
        threads = [int(t) for t in args.threads.split(",")]
        for t, batch in itertools.product(threads, (1, 64)):
            got = shortcuts[shortcut][f"threads{t}/batch{batch}"] = measure(
                models, t, batch, args.rounds
            )
            ratios = ", ".join(
                f"{n} {r['median']:.2f}x (min {r['min']:.2f}x)" for n, r in got["ratio"].items()
            )
            common.log(f"ResNet-20 ({shortcut}) {t} thread(s) batch {batch}: {ratios}")
    result["load_after"] = os.getloadavg()[0]
    common.write_json(args.out, result, say=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
