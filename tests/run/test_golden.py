"""The golden run: a fixed-seed tiny digits run whose metrics and final weights must stay
bit-identical across refactors of the training path (issue 23, "behaviour unchanged").

The golden values in ``golden/digits_run.json`` were written by the code before the refactor
(``PYTHONPATH=src:tests python tests/run/test_golden.py`` rewrites them; do that only for an intended change
of behaviour, and say so in the commit). The metrics (6 significant digits, as ``metrics.csv``
writes them) must match exactly; the final weights are compared by per-tensor sums and absolute
sums to a relative 1e-4, because their last bits differ between CPUs (the same code and seed
gave other sha256 digests on two AMD EPYC machines, with identical metrics).
"""

from __future__ import annotations

import copy
import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_config import TINY

from chanloss.config import load_config
from chanloss.run.session import train

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "digits_run.json"
# Wall-clock columns differ run to run; everything else must not.
TIMING_COLUMNS = {"epoch_time", "samples_per_s"}
# The gradient-share record (on by default) adds columns; it must not move the weights.
SHARE = ("gshare_", "gnorm_")


def golden_config() -> Any:
    """Three epochs of CE + MC-Loss + CC-Loss with a validation split, warm-up + cosine
    schedule, weight decay and crop augmentation: most of the training path in ~5 s."""
    raw = copy.deepcopy(TINY)
    raw.update(
        {
            "epochs": 3,
            "seed": 3,
            "model": {"name": "convnet_small", "width": 8, "feature_channels": 20, "pools": 2},
            "optim": {"lr": 0.1, "weight_decay": 5e-4},
            "losses": [
                {"name": "ce"},
                {"name": "mc", "weight": 0.1},
                {
                    "name": "cc",
                    "weight": 0.01,
                    "min_hidden": 1,
                    "placement": "branch",
                    "form": "margin",
                },
            ],
            "schedule": {"name": "cosine", "warmup_epochs": 0.5},
            "data": {"name": "digits", "val_fraction": 0.2, "augment": {"crop_padding": 1}},
        }
    )
    return load_config(raw=raw)


def state_stats(state: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per floating-point tensor: its sum and its absolute sum (float64), by name."""
    return {
        name: [float(t.double().sum()), float(t.double().abs().sum())]
        for name, t in sorted(state.items())
        if t.is_floating_point()
    }


def run_golden(out: Path) -> dict[str, Any]:
    """Train the golden config into ``out`` and return what the golden file records."""
    summary = train(golden_config(), out, verbose=0)
    with open(out / "metrics.csv", newline="") as handle:
        rows = [
            {k: v for k, v in row.items() if k not in TIMING_COLUMNS and not k.startswith(SHARE)}
            for row in csv.DictReader(handle)
        ]
    checkpoint = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    return {
        "metrics": rows,
        "model_stats": state_stats(checkpoint["model"]),
        "losses_stats": state_stats(
            {f"{i}.{k}": v for i, part in enumerate(checkpoint["losses"]) for k, v in part.items()}
        ),
        "final_test_acc": summary["final_test_acc"],
        "final_val_acc": summary["final_val_acc"],
        "best_val_acc": summary["best_val_acc"],
        "best_epoch": summary["best_epoch"],
    }


def test_golden_run_is_unchanged(tmp_path: Path) -> None:
    expected = json.loads(GOLDEN.read_text())
    got = run_golden(tmp_path / "run")
    assert got["metrics"] == expected["metrics"]
    for key in ("model_stats", "losses_stats"):
        assert got[key].keys() == expected[key].keys()
        for name, values in expected[key].items():
            assert got[key][name] == pytest.approx(values, rel=1e-4, abs=1e-6), (key, name)
    for key in ("final_test_acc", "final_val_acc", "best_val_acc", "best_epoch"):
        assert got[key] == expected[key], key


def test_state_stats_see_a_changed_weight() -> None:
    state = {"w": torch.tensor([0.5, -0.25]), "steps": torch.tensor(3)}
    assert state_stats(state) == {"w": [0.25, 0.75]}  # integer buffers are left out
    changed = state_stats({"w": torch.tensor([0.5, -0.2501]), "steps": torch.tensor(3)})
    assert changed["w"] != pytest.approx(state_stats(state)["w"], rel=1e-4, abs=1e-6)


if __name__ == "__main__":  # rewrite the golden file
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        values = run_golden(Path(scratch) / "run")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(values, indent=1) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
