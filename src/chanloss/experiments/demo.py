"""``chanloss demo``: cross-entropy vs cross-entropy + MC-Loss where the study found a real gain.

Why this comparison: in the accuracy study (README, "Results"; 3 seeds per loss) MC-Loss beats
cross-entropy by more than two standard errors on the synthetic fine-grained set (ConvNet, 30
epochs: 97.27 ± 0.55 % vs 94.80 ± 0.40 %), while on the digit sets its gain is within noise in
half of the settings and CC-Loss never beats cross-entropy beyond noise. The demo therefore
trains that setting: the study's recipe and the MC-Loss weights it chose on a validation split
(``alpha=1.5, beta=1``), shortened to train in under 3 minutes on 2 CPU cores: :data:`DEMO_EPOCHS`
epochs instead of 30, a ConvNet of width 16 instead of 32, batches of 32 instead of 64, two runs
side by side with one thread each (171 s for the six runs on the project's 2-core machine,
``time chanloss demo``).

The two configs are shipped as ``configs/demo-{ce,mc}.yaml`` too (a test keeps them identical).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from chanloss.config import load_config
from chanloss.experiments.comparison import ConfigResult, compare, results_table
from chanloss.experiments.verdict import gap_line

#: Epochs of the demo's runs (the study trained 30).
DEMO_EPOCHS = 9

_BASE: dict[str, Any] = {
    "model": {"name": "convnet_small", "width": 16, "feature_channels": 30, "pools": 1},
    "data": {
        "name": "finegrained",
        "val_fraction": 0.0,
        "options": {"num_classes": 10},
        "augment": {"crop_padding": 2, "hflip": True},
    },
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "epochs": DEMO_EPOCHS,
    "batch_size": 32,
    "seed": 0,
}

#: The demo's configs, by label: the same network, data and schedule; MC-Loss added to CE.
DEMO_CONFIGS: dict[str, dict[str, Any]] = {
    "demo-ce": {**_BASE, "losses": [{"name": "ce"}]},
    "demo-mc": {
        **_BASE,
        "losses": [{"name": "ce"}, {"name": "mc", "alpha": 1.5, "beta": 1.0}],
    },
}

#: What the study measured in this setting (30 epochs, 3 seeds; README "Results").
STUDY = {"epochs": 30, "ce": (94.80, 0.40), "mc": (97.27, 0.55)}


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    seeds: int = 3,
    overrides: list[str] | None = None,
    jobs: int = 2,
) -> str:
    """Run the comparison; print the table and what it shows; return the table."""
    configs = [
        (label, load_config(raw=copy.deepcopy(raw), overrides=overrides or []))
        for label, raw in DEMO_CONFIGS.items()
    ]
    epochs = configs[0][1].epochs
    print(
        f"chanloss demo: cross-entropy (CE) vs CE + MC-Loss on the synthetic fine-grained set "
        f"(10 classes told apart by small parts), a small ConvNet from scratch, {epochs} epochs, "
        f"{seeds} seed{'s' if seeds != 1 else ''} each, {jobs} run{'s' if jobs != 1 else ''} at "
        f"a time; the progress lines estimate the time left. Results in {out_dir}",
        flush=True,
    )
    start = time.perf_counter()
    results = compare(configs, seeds=seeds, out_dir=out_dir, jobs=jobs)
    table = results_table(results)
    print(
        f"\n{table}\n\n{verdict(results)}\n\ncurves: {Path(out_dir) / 'accuracy.png'} "
        f"({time.perf_counter() - start:.0f} s)",
        flush=True,
    )
    return table


def verdict(results: list[ConfigResult]) -> str:
    """What the table shows, with the study's numbers and the caveats."""
    by_label = {r.label: r for r in results}
    ce, mc = by_label.get("demo-ce"), by_label.get("demo-mc")
    lines = []
    if ce is not None and mc is not None:
        lines.append(gap_line(ce, mc, name="MC-Loss - CE"))
    ce_s, mc_s = STUDY["ce"], STUDY["mc"]
    lines += [
        f"For scale: trained {STUDY['epochs']} epochs in the study, CE reached "
        f"{ce_s[0]:.2f} ± {ce_s[1]:.2f} % and CE + MC-Loss {mc_s[0]:.2f} ± {mc_s[1]:.2f} % "
        f"(+{mc_s[0] - ce_s[0]:.2f} points, beyond noise). In a short run most of the gap is "
        "MC-Loss learning this set faster; it narrows with longer training.",
        "Caveats: the set is synthetic and made so that classes differ only in small parts, "
        "the case MC-Loss was designed for; on the study's digit sets its gain was within noise "
        "in half of the settings, and CC-Loss never beat CE beyond noise. A win here is not a "
        "promise for your data: compare on it with `chanloss compare`.",
    ]
    return "\n".join(lines)
