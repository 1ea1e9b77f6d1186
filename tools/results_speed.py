"""The results page's speed, GPU-check and CC-Loss-forms sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from results_format import column_order, fmt_param, link, machine_line, pct


def speed_section(found: dict[str, Any], base: Path) -> list[str]:
    speed = found["speed"]
    out = ["### Speed", ""]
    if not speed:
        return out + ["No benchmark results yet: run `make bench`, then `make report`.", ""]
    for data in speed.get("train_step", []):
        out += _train_step_lines(data)
    for data in speed.get("losses", []):
        out += _losses_lines(data)
    for data in speed.get("scaling", []):
        png = data.get("_png")
        out += [
            f"Scaling of CC-Loss and MC-Loss with batch, channels and classes "
            f"({machine_line(data.get('machine'))}, `benchmarks/bench_scaling.py`)"
            + ". Medians with quartile bands; the spread between rounds grows at the largest "
            "inputs." + (f"\n\n![scaling]({link(png, base)})" if png else ""),
            "",
        ]
    extra = []
    for data in speed.get("mc_loss_cpu", []):
        for r in data.get("results", []):
            try:
                extra.append(_mc_line(r))
            except (KeyError, TypeError, ValueError):
                extra.append("MC-Loss component benchmark: results in an unknown format.")
    for data in speed.get("cc_loss_cpu", []):
        try:
            line = _cc_line(data)
        except (KeyError, TypeError, ValueError, IndexError):
            line = "CC-Loss component benchmark: results in an unknown format."
        if line:
            extra.append(line)
    for data in speed.get("data_cpu", []):
        try:
            extra.append(_data_line(data))
        except (KeyError, TypeError, ValueError):
            extra.append("Data loading benchmark: results in an unknown format.")
    if extra:
        out += [*[f"- {e}" for e in extra], ""]
    for data in speed.get("gpu_check_cuda", []):
        try:
            out += _gpu_check_lines(data)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            out += ["GPU check: results in an unknown format.", ""]
    return out


def _train_step_lines(data: dict[str, Any]) -> list[str]:
    """``train_step_<device>.json``: the step times of CE, CE+CC and CE+MC and their ratios."""
    out: list[str] = []
    target = 100 * data.get("target_overhead", 0.1)
    out += [
        f"Training step (forward, losses, backward, SGD step), median ms over interleaved "
        f"rounds in one process; {machine_line(data.get('machine'))} "
        f"(`benchmarks/bench_train_step.py`). Target: CC and MC add at most {target:.0f} %.",
        "",
        "| setup | CE | CE+CC | CE+MC | CE+CC / CE | CE+MC / CE |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for r in data["results"]:
        v, o = r["variants"], r["overhead"]
        ratio_cells = []
        for key in ("ce+cc", "ce+mc"):
            if key not in o:
                ratio_cells.append("")
                continue
            ok = "meets target" if o[key]["within_target"] else "**misses** target"
            if o[key]["ratio_of_medians"] < 1.0:
                ok += "; below 1 is run-to-run noise"
            ratio_cells.append(
                f"{o[key]['ratio_of_medians']:.3f} (rounds {o[key]['per_round_ratio_p25']:.2f}"
                f"–{o[key]['per_round_ratio_p75']:.2f}; {ok})"
            )
        out.append(
            f"| {r['model']} {r['image_size']} px, batch {r['batch']}, K={r['num_classes']} | "
            + " | ".join(f"{v[k]['median_ms']:.1f}" for k in ("ce", "ce+cc", "ce+mc"))
            + " | "
            + " | ".join(ratio_cells)
            + " |"
        )
        notes.append(f"{r['model']}: {r['note']}")
    out += ["", *[f"- {n}" for n in notes], ""]
    return out


def _losses_lines(data: dict[str, Any]) -> list[str]:
    """``losses_<device>.json``: forward + backward time and peak memory of every loss."""
    out: list[str] = []
    out += [
        f"Forward + backward of every registered loss, median ms (peak MiB allocated during "
        f"the call); {machine_line(data.get('machine'))} (`benchmarks/bench_losses.py`):",
        "",
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in data["results"]:
        groups.setdefault(row["group"], []).append(row)
    names: list[str] = []
    for rows in groups.values():
        names += [r["loss"] for r in rows if r["loss"] not in names]
    short = [g.replace("logits/embedding ", "").replace("features ", "") for g in groups]
    out += ["| loss | " + " | ".join(short) + " |", "|---|" + "---|" * len(groups)]
    for name in names:
        cells = []
        for rows in groups.values():
            row = next((r for r in rows if r["loss"] == name), None)
            if row is None:
                cells.append("")
            elif "skipped" in row:
                cells.append("skipped")
            else:
                mem = f" ({row['peak_bytes'] / 2**20:.1f})" if "peak_bytes" in row else ""
                cells.append(f"{row['time']['median_ms']:.2f}{mem}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out.append("")
    return out


def _data_line(data: dict[str, Any]) -> str:
    """One sentence from ``bench_data.py``: images per worker and the RSS of both modes."""
    rates = ", ".join(
        f"{name} px {r['images_per_cpu_s']:.0f}" for name, r in data["per_worker"].items()
    )
    rss = data["peak_rss"]
    return (
        f"Image decoding (decode, resize, random crop) per DataLoader worker, images per CPU "
        f"second: {rates}; peak RSS above the imports for {data['train_images']} training "
        f"images at 512 px: memory mode {rss['memory']['data_mb']:.0f} MB, stream mode "
        f"{rss['stream']['data_mb']:.0f} MB ({machine_line(data.get('machine'))}, "
        "`bench_data.py`)."
    )


def _gpu_check_lines(data: dict[str, Any]) -> list[str]:
    """The GPU check (``gpu_check.sh``): a sentence per section and the backbone table."""
    out = [
        f"GPU check ({machine_line(data.get('machine'))}, `benchmarks/gpu_check.sh`): "
        f"{'all checks passed' if data.get('ok') else '**some checks failed**'}.",
        "",
    ]
    losses = data.get("losses") or []
    if losses:
        match = sum(bool(r["fp32_match"]) for r in losses)
        finite = sum(bool(r["fp16_finite"]) and bool(r["bf16_finite"]) for r in losses)
        worst = max(r["fp32_grad_rel_diff"] for r in losses)
        out += [
            f"- Losses: {match} of {len(losses)} equal their CPU results in float32 (largest "
            f"relative gradient difference {worst:.1e}); {finite} of {len(losses)} finite under "
            "float16 and bfloat16 autocast.",
        ]
    for r in data.get("loss_speed") or []:
        out.append(
            f"- B={r['B']}, C={r['C']}, {r['H']}x{r['W']}, K={r['K']}: MC-Loss {r['mc_ms']:.2f} "
            f"ms ({r['mc_over_ce']:.1f}x the softmax cross-entropy), CC-Loss {r['cc_ms']:.2f} "
            f"ms ({r['cc_over_ce']:.1f}x), forward + backward."
        )
    stream = data.get("stream")
    if stream:
        out.append(
            f"- Stream mode ({stream['recipe']}, {stream['workers']} workers): "
            f"{stream['loading_images_per_s']:.0f} images/s loaded, "
            f"{stream['resnet50_training_images_per_s']:.0f} images/s into ResNet-50 training."
        )
    ddp = data.get("ddp")
    if ddp:
        out.append(f"- `chanloss train --nproc` with NCCL: {ddp['status']}.")
    out.append("")
    backbones = data.get("backbones") or []
    if backbones:
        out += [
            "| backbone | px | batch | losses | ms / step (AMP, channels-last) | images/s "
            "| CUB epoch (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in backbones:
            epoch = r.get("epoch_estimate_s")
            out.append(
                f"| {r['model']} | {r['image_size']} | {r['batch']} | {'+'.join(r['losses'])} "
                f"| {r['ms_per_step']:.1f} | {r['images_per_s']:.0f} "
                f"| {'' if epoch is None else f'{epoch:.0f}'} |"
            )
        out.append("")
    return out


def _mc_line(r: dict[str, Any]) -> str:
    """One sentence from a ``bench_mc_loss.py`` result (flat, or per clock ``cpu``/``wall``)."""
    s = r["shape"]
    clock = next((c for c in ("cpu", "wall") if isinstance(r.get(c), dict)), None)
    numbers = r[clock] if clock else r
    how = f" ({clock} clock)" if clock else ""
    return (
        f"MC-Loss at B={s['B']}, C={s['C']}, {s['H']}x{s['W']}, K={s['K']}: "
        f"{numbers['speedup_vs_reference']:.2f}x faster than the authors' code structure, "
        f"{numbers['ratio_to_floor']:.2f}x the time of a bare softmax forward+backward{how} "
        "(`bench_mc_loss.py`)."
    )


def _cc_line(data: dict[str, Any]) -> str | None:
    """One sentence from ``bench_cc_loss.py``: bytes per pair at the largest batch."""
    rows = data.get("batch_sweep", [])
    if not rows:
        return None
    big = rows[-1]
    ratio = big.get("naive_over_ours_peak")
    naive = f", {ratio:.1f}x less than a naive (B, B, C) form" if ratio else ""
    return (
        f"CC-Loss pairwise stage at B={big['batch']}, C={big['channels']}: "
        f"{big['pairs_bytes_per_pair']:.1f} bytes per pair{naive} (`bench_cc_loss.py`)."
    )


def _cc_setting(row: dict[str, Any]) -> str:
    """``ce`` or ``form=margin, weight=10, hidden 7 (reduction 4)[, class_balanced]``."""
    cc = next((e for e in row["losses"] if e["name"] == "cc"), None)
    if cc is None:
        return "ce (no CC-Loss)"
    channels = 30 if row["model"] == "convnet_small" else 64  # the study recipes' feature maps
    reduction = cc.get("reduction", 16)
    hidden = max(channels // reduction, min(cc.get("min_hidden", 1), channels))
    bits = [f"form={cc.get('form', 'ratio')}", f"weight={fmt_param(cc.get('weight', 1.0))}"]
    bits.append(f"hidden {hidden} (reduction {reduction})")
    if row.get("data", {}).get("sampler") == "class_balanced":
        bits.append(f"class_balanced {row['data'].get('samples_per_class', 4)}/class")
    return ", ".join(bits)


def cc_forms_section(found: dict[str, Any]) -> list[str]:
    """Every CC-Loss form measured by ``bench_cc_forms.py``, on validation, next to CE."""
    data = found.get("cc_forms")
    if not data:
        return []
    lines = [
        "### CC-Loss forms (validation)",
        "",
        "Final-epoch **validation** accuracy (%) of CE + CC-Loss in each form (the ratio is the "
        "original reconstruction; margin, softplus and cosine are our bounded alternatives, "
        "docs/cc-loss.md), mean ± sample std over seeds, from `benchmarks/bench_cc_forms.py` "
        "(`benchmarks/results/cc_forms.json`; the test split is never read). Shortened recipes "
        "(epochs below) to fit a shared 2-core CPU.",
        "",
    ]
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for row in data["rows"]:
        groups.setdefault((row["dataset"], row["model"], row["epochs"]), []).append(row)
    for (dataset, model, epochs), rows in sorted(
        groups.items(), key=lambda kv: (column_order(kv[0][0]), kv[0])
    ):
        ce = next((r for r in rows if r["label"] == "ce"), None)
        seeds = sorted({r["seeds"] for r in rows})
        lines += [
            f"{dataset}, {model}, {epochs} epochs, {'/'.join(map(str, seeds))} seed(s):",
            "",
            "| setting | val acc | vs CE (points) |",
            "|---|---|---|",
        ]
        for row in sorted(rows, key=lambda r: (r["label"] != "ce", -(r["val_acc_mean"] or 0))):
            mean, std = row["val_acc_mean"], row["val_acc_std"]
            delta = "" if ce is None or row is ce else f"{100 * (mean - ce['val_acc_mean']):+.2f}"
            lines.append(f"| {_cc_setting(row)} | {pct(mean, std)} | {delta} |")
        lines.append("")
    lines += [
        f"Runs: {machine_line(data.get('machine'))}.",
        "",
        "The side-branch default before the gate reading (`form=margin`, `weight=1`) was "
        "chosen from these validation results (the gate reading's default is in the section "
        "above); the `cc` rows of the accuracy study above are the ratio form its sweeps "
        "tuned, and its `center` rows were trained with optimiser-moved centres "
        "(`center_update: sgd`), before the published update became the default; the "
        "*current defaults* columns of the study (`cc_default`, `center_default`; "
        "`run_study.py --part defaults-NAME`) train both at their current defaults, untuned, "
        "beside CE.",
        "",
    ]
    return lines
