"""The channel-pruning section of the results block (``tools/results_page.py``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from results_format import pct

PRUNE_METHODS = ("cpli", "l1", "bn_scale", "taylor", "random")
#: the table's columns: each criterion without and with the least-squares refit
LABELS = tuple(m + suffix for m in PRUNE_METHODS for suffix in ("", "+refit"))


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
    labels = [m for m in LABELS if any(k[3] == m for k in cells)]
    lines = [
        "### Channel pruning (`chanloss prune`)",
        "",
        f"`benchmarks/bench_prune.py` ({machine_line(data.get('machine'))}"
        f"{'' if data.get('finished', True) else '; stopped early: the rows it measured'}): "
        f"each model trained, then pruned (whole groups of coupled channels, residual streams "
        f"included, the same per-group keep ratio and widths for every criterion, so equal "
        f"MACs) and fine-tuned for {settings['finetune_epochs']} epoch at the default "
        "fine-tune lr; test accuracy (%) of `pruned.pt` (the best of right after pruning and "
        f"the fine-tune epochs on validation), mean ± sample std over {settings['seeds']} "
        "seeds, with the accuracy right after pruning in brackets; `+refit`: with the "
        "least-squares refit of the layers reading each pruned group. CPLI is our "
        "reconstruction ([pruning.md](pruning.md)); these are small, briefly trained models.",
        "",
        "| setup | loss | speedup | original | " + " | ".join(labels) + " |",
        "|---|---|---|---|" + "---|" * len(labels),
    ]
    for setup, loss, speedup in keys:
        row = [c for m in labels if (c := cells.get((setup, loss, speedup, m)))]
        reached = sum(c["speedup"] for c in row) / len(row)
        orig = row[0]["test_original"]
        parts = []
        for m in labels:
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
    lines += [
        "",
        "CPLI against the best baseline with the same refit setting, at equal MACs (beyond "
        "noise: more than 2 standard errors of the difference of means; else cannot tell):",
        "",
    ]
    for v in summary["cpli_vs_best_baseline"]:
        lines.append(
            f"- {v['setup']} {v['loss']} {v['speedup_target']:g}x: {v.get('cpli', 'cpli')} − "
            f"{v['best_baseline']} "
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
    lines += _cost_lines(data["rows"], settings)
    lines += latency_lines(data.get("latency"))
    return [*lines, ""]


def _cost_lines(rows: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    """ResNet-20's pruning time and the latency measured inside the benchmark's runs."""
    lines: list[str] = []
    fixed = settings.get("cpli_mix")
    mixes = "three mixing weights" if fixed is None else f"mixing weight fixed at {fixed:g}"
    resnet = [
        r
        for r in rows
        if r["setup"] == "resnet20-finegrained"
        and r["speedup_target"] == 2
        and r["method"].startswith("cpli")
    ]
    if resnet:
        wall = sum(r["prune_s"] for r in resnet) / len(resnet)
        cpu = sum(r.get("prune_cpu_s", r["prune_s"]) for r in resnet) / len(resnet)
        ratio = sum(r["latency64_before_ms"] / r["latency64_after_ms"] for r in resnet)
        lines += [
            "",
            f"ResNet-20 at 2x by CPLI ({settings.get('calibration_images', '?')} calibration "
            f"images, {mixes}, with and without refit, no fine-tuning): pruning "
            f"took {wall:.0f} s wall / "
            f"{cpu:.0f} s CPU (one thread) on average on the shared, loaded machine; batch-64 "
            f"latency measured inside those runs {ratio / len(resnet):.2f}x lower than the "
            "original's (a few calls each, under other processes' load: noisy).",
        ]
    return lines


def latency_lines(latency: dict[str, Any] | None) -> list[str]:
    """``benchmarks/bench_prune_latency.py``'s ratios (``results/prune_latency_cpu.json``)."""
    if not latency or "shortcuts" not in latency:
        return []
    lines = [
        "",
        "`benchmarks/bench_prune_latency.py` (ResNet-20 group-pruned to 2x and 4x fewer MACs, "
        "widths in multiples of 8 (`round_to`, the default) and of 1; interleaved rounds; "
        f"1-minute load average {latency['load_before']:.1f} before, "
        f"{latency['load_after']:.1f} after, on 2 cores shared with other work): batch-64 "
        "latency of the original / the pruned model, ratio of medians (of minima):",
        "",
        "| shortcut | threads | 2x, round_to 8 | 2x, round_to 1 | 4x, round_to 8 | 4x, round_to 1 |",
        "|---|---|---|---|---|---|",
    ]
    for shortcut, entry in latency["shortcuts"].items():
        for key in sorted(k for k in entry if k.endswith("/batch64")):
            ratio = entry[key]["ratio"]
            cells = [
                f"{ratio[n]['median']:.2f}x ({ratio[n]['min']:.2f}x)"
                for n in ("2x/round8", "2x/round1", "4x/round8", "4x/round1")
            ]
            threads = key.split("/")[0].removeprefix("threads")
            lines.append(f"| {shortcut} | {threads} | " + " | ".join(cells) + " |")
    return lines
