"""What ``chanloss prune`` measures and prints: the latency of the model before and after
pruning (interleaved rounds, medians), and the terminal summary of a prune.json."""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from torch import Tensor, nn

from chanloss.core.text import pct

BATCHES = (1, 64)


@torch.no_grad()
def measure_latency(
    models: dict[str, nn.Module], example: Tensor, rounds: int
) -> dict[str, dict[str, float]]:
    """Median wall time (ms) of one forward pass of each model on the CPU at batch 1 and 64
    (eval mode, this process's thread count), timed in interleaved rounds: each round runs
    every model once, in an order that rotates, so that load from other processes hits them
    alike. ``{batch: {name: ms}}``."""
    copies = {name: copy.deepcopy(m).cpu().eval() for name, m in models.items()}
    names = list(copies)
    result: dict[str, dict[str, float]] = {}
    for batch in BATCHES:
        x = example.cpu().expand(batch, *example.shape[1:]).contiguous()
        for model in copies.values():
            for _ in range(2):
                model(x)
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                copies[name](x)
                times[name].append(1000 * (time.perf_counter() - start))
        result[f"batch{batch}"] = {n: statistics.median(t) for n, t in times.items()}
    return result


def latency_entry(timing: dict[str, dict[str, float]], rounds: int) -> dict[str, Any]:
    """prune.json's ``latency_ms``: before/after per batch, the measured speed-ups, threads."""
    return {
        "before": {b: t["original"] for b, t in timing.items()},
        "after": {b: t["pruned"] for b, t in timing.items()},
        "speedup": {b: t["original"] / t["pruned"] for b, t in timing.items()},
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "how": "median of interleaved rounds (original and pruned alternating), eval mode, CPU",
    }


def speed_lines(result: dict[str, Any]) -> list[str]:
    """The measured speed-up next to the MAC ratio, and a plain word when it falls short."""
    lat = result["latency_ms"]
    measured = ", ".join(f"{b.removeprefix('batch')}: {v:.2f}x" for b, v in lat["speedup"].items())
    lines = [
        f"measured speed-up at {lat['threads']} thread(s) by batch size ({measured}); "
        f"MACs {result['speedup']:.2f}x fewer"
    ]
    if lat["speedup"]["batch64"] < result["speedup_target"]:
        lines.append(
            f"the measured batch-64 speed-up ({lat['speedup']['batch64']:.2f}x) falls short of "
            f"the --speedup {result['speedup_target']:g} MAC target: fewer MACs do not turn "
            "into the same fewer milliseconds on this machine"
        )
    return lines


def format_table(result: dict[str, Any]) -> str:
    """The terminal summary of a prune.json."""

    acc = result["accuracy"]
    rows = [("", "original", "pruned", "fine-tuned")]
    for split in ("val", "test"):
        rows.append(
            (
                f"{split} accuracy",
                pct(acc["original"].get(split), unit="%"),
                pct(acc["pruned"].get(split), unit="%"),
                pct((acc["finetuned"] or {}).get(split), unit="%"),
            )
        )
    lat = result["latency_ms"]
    rows.append(("MACs", f"{result['macs']['before']:,}", f"{result['macs']['after']:,}", ""))
    rows.append(
        ("parameters", f"{result['params']['before']:,}", f"{result['params']['after']:,}", "")
    )
    for batch in ("batch1", "batch64"):
        rows.append(
            (
                f"latency {batch} (ms)",
                f"{lat['before'][batch]:.2f}",
                f"{lat['after'][batch]:.2f}",
                "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(
        f"{result['method']}{' + refit' if result.get('refit') else ''}: "
        f"{result['speedup']:.2f}x fewer MACs (target {result['speedup_target']:g}x), "
        f"pruning took {result['time_s']['prune']:.1f} s"
        + (f", mix {result['cpli_mix']:g}" if result["cpli_mix"] is not None else "")
    )
    lines += speed_lines(result)
    kept = result.get("kept")
    if kept is not None:
        lines.append(f"kept: {kept['which']} ({kept['why']})")
    return "\n".join(lines)
