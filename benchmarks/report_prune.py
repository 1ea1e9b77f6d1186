"""The channel-pruning section of the results block (``benchmarks/report.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PRUNE_METHODS = ("cpli", "l1", "bn_scale", "taylor", "random")


def pct(mean: float, std: float) -> str:
    """``mean ± std`` of fractions, in percent."""
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def prune_section(data: dict[str, Any] | None, machine_line: Callable[[Any], str]) -> list[str]:
    """``benchmarks/bench_prune.py``'s results (``results/prune_cpu.json``): fine-tuned test
    accuracy per pruning method, the CPLI-vs-best-baseline verdicts, MC vs CE, and ResNet-20's
    pruning time and latency. ``machine_line`` formats the machine (report.py's)."""
    if not data:
        return []
    summary = data["summary"]
    settings = data["settings"]
    cells = {(c["setup"], c["loss"], c["speedup_target"], c["method"]): c for c in summary["cells"]}
    keys = sorted({k[:3] for k in cells}, key=lambda k: (k[0], k[1] != "ce", k[1], k[2]))
    lines = [
        "### Channel pruning (`chanloss prune`)",
        "",
        f"`benchmarks/bench_prune.py` ({machine_line(data.get('machine'))}"
        f"{'' if data.get('finished', True) else '; stopped early: the rows it measured'}): "
        f"each model trained, then pruned to 2x and 4x fewer MACs by every method (the same "
        f"per-layer budget) and fine-tuned for {settings['finetune_epochs']} epoch; final test "
        f"accuracy (%), mean ± sample std over {settings['seeds']} seeds, with the accuracy "
        "right after pruning (before fine-tuning) in brackets. CPLI is our reconstruction "
        "([pruning.md](pruning.md)); these are small, briefly trained models.",
        "",
        "| setup | loss | speedup | original | " + " | ".join(PRUNE_METHODS) + " |",
        "|---|---|---|---|" + "---|" * len(PRUNE_METHODS),
    ]
    for setup, loss, speedup in keys:
        row = [c for m in PRUNE_METHODS if (c := cells.get((setup, loss, speedup, m)))]
        reached = sum(c["speedup"] for c in row) / len(row)
        orig = row[0]["test_original"]
        parts = []
        for m in PRUNE_METHODS:
            c = cells.get((setup, loss, speedup, m))
            parts.append(
                "—"
                if c is None
                else f"{pct(*c['test_finetuned'])} ({100 * c['test_pruned'][0]:.1f})"
            )
        lines.append(
            f"| {setup} | {loss} | {speedup:g}x ({reached:.2f}x) | {pct(*orig)} | "
            + " | ".join(parts)
            + " |"
        )
    lines += ["", "CPLI against the best baseline after fine-tuning (2 standard errors):", ""]
    for v in summary["cpli_vs_best_baseline"]:
        lines.append(
            f"- {v['setup']} {v['loss']} {v['speedup_target']:g}x: CPLI − {v['best_baseline']} "
            f"= {100 * v['cpli_minus_best']:+.1f} pts (2 SE = {200 * v['standard_error']:.1f}): "
            f"{v['verdict']}"
        )
    pairs = summary["mc_vs_ce"]
    if pairs:
        less = sum(p["mc_loses_less"] for p in pairs)
        lines += [
            "",
            f"MC-trained models lost less accuracy than CE-trained ones (original − fine-tuned) "
            f"in {less} of {len(pairs)} (setup, speedup, method) cells.",
        ]
    resnet = [
        r
        for r in data["rows"]
        if r["setup"].startswith("resnet20") and r["speedup_target"] == 2 and r["method"] == "cpli"
    ]
    if resnet:
        wall = sum(r["prune_s"] for r in resnet) / len(resnet)
        cpu = sum(r.get("prune_cpu_s", r["prune_s"]) for r in resnet) / len(resnet)
        ratio = sum(r["latency64_before_ms"] / r["latency64_after_ms"] for r in resnet)
        lines += [
            "",
            f"ResNet-20 at 2x by CPLI ({settings.get('calibration_images', '?')} calibration "
            f"images, three mixing weights, no fine-tuning): pruning took {wall:.0f} s wall / "
            f"{cpu:.0f} s CPU (one thread) on average on the shared, loaded machine; batch-64 "
            f"latency measured inside those runs {ratio / len(resnet):.2f}x lower than the "
            "original's (a few calls each, under other processes' load: noisy).",
        ]
    latency = data.get("latency")
    if latency and "batch64" in latency:
        b1, b64 = latency["batch1"], latency["batch64"]
        threads = (latency.get("machine") or {}).get("torch_threads", "?")
        lines += [
            "",
            f"`benchmarks/bench_prune_latency.py` (ResNet-20, {threads} torch threads, "
            "interleaved rounds): original / pruned latency, ratio of medians (of minima): "
            f"batch 64 {b64['ratio_2x']:.2f}x ({b64['ratio_2x_min']:.2f}x) at 2x and "
            f"{b64['ratio_4x']:.2f}x ({b64['ratio_4x_min']:.2f}x) at 4x; batch 1 "
            f"{b1['ratio_2x']:.2f}x ({b1['ratio_2x_min']:.2f}x) and {b1['ratio_4x']:.2f}x "
            f"({b1['ratio_4x_min']:.2f}x). Only the channels inside each residual block are "
            "removed: the residual stream keeps its width, so its element-wise operations "
            "cost as before.",
        ]
    return [*lines, ""]
