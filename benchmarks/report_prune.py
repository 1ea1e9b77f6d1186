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
        "([docs/pruning.md](docs/pruning.md)); these are small, briefly trained models.",
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
            f"ResNet-20 at 2x by CPLI: pruning (three mixing weights, no fine-tuning) took "
            f"{wall:.0f} s wall / {cpu:.0f} s CPU on average on the shared machine; batch-64 CPU "
            f"latency {ratio / len(resnet):.2f}x lower than the original's.",
        ]
    return [*lines, ""]
