"""``chanloss demo``: cross-entropy vs CC-Loss vs MC-Loss on MNIST-5k, 3 seeds, a few minutes on CPU.

The three configs are the same small ConvNet and schedule; CC and MC add their channel loss to
cross-entropy. They are written out as ``configs/mnist5k-{ce,cc,mc}.yaml`` too (a test keeps
the two identical).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from chanloss.training.compare import compare, results_table
from chanloss.training.config import load_config

_BASE: dict[str, Any] = {
    "model": {"name": "convnet_small", "width": 16, "feature_channels": 30, "pools": 2},
    "data": {"name": "mnist5k", "val_fraction": 0.0, "augment": {"crop_padding": 2}},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "epochs": 15,
    "batch_size": 32,
    "seed": 0,
}

#: The demo's configs, by label: the same network and schedule, CE plus a channel loss.
DEMO_CONFIGS: dict[str, dict[str, Any]] = {
    "mnist5k-ce": {**_BASE, "losses": [{"name": "ce"}]},
    "mnist5k-cc": {**_BASE, "losses": [{"name": "ce"}, {"name": "cc", "reduction": 4}]},
    "mnist5k-mc": {**_BASE, "losses": [{"name": "ce"}, {"name": "mc"}]},
}


def run_demo(
    out_dir: str | Path = "runs/demo", *, seeds: int = 3, overrides: list[str] | None = None
) -> str:
    """Run the comparison, print and return the Markdown table."""
    configs = [
        (label, load_config(raw=copy.deepcopy(raw), overrides=overrides or []))
        for label, raw in DEMO_CONFIGS.items()
    ]
    print(
        f"chanloss demo: CE vs CC-Loss vs MC-Loss on MNIST-5k, {seeds} seed"
        f"{'s' if seeds != 1 else ''} each, results in {out_dir}",
        flush=True,
    )
    results = compare(configs, seeds=seeds, out_dir=out_dir)
    table = results_table(results)
    print(f"\n{table}\n\ncurves: {Path(out_dir) / 'test_accuracy.png'}", flush=True)
    return table
