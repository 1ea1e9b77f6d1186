"""The golden run: a fixed-seed tiny digits run whose metrics and final weights must stay
bit-identical across refactors of the training path (issue 23, "behaviour unchanged").

The golden values in ``golden/digits_run.json`` were written by the code before the refactor
(``PYTHONPATH=src python tests/test_golden.py`` rewrites them; do that only for an intended change
of behaviour, and say so in the commit).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from tiny_config import TINY

from chanloss.training import load_config, train

GOLDEN = Path(__file__).parent / "golden" / "digits_run.json"
# Wall-clock columns differ run to run; everything else must not.
TIMING_COLUMNS = {"epoch_time", "samples_per_s"}


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
                {"name": "cc", "weight": 0.01, "min_hidden": 1},
            ],
            "schedule": {"name": "cosine", "warmup_epochs": 0.5},
            "data": {"name": "digits", "val_fraction": 0.2, "augment": {"crop_padding": 1}},
        }
    )
    return load_config(raw=raw)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_golden(out: Path) -> dict[str, Any]:
    """Train the golden config into ``out`` and return what the golden file records."""
    summary = train(golden_config(), out, verbose=0)
    with open(out / "metrics.csv", newline="") as handle:
        rows = [
            {k: v for k, v in row.items() if k not in TIMING_COLUMNS}
            for row in csv.DictReader(handle)
        ]
    checkpoint = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    return {
        "metrics": rows,
        "model_sha256": state_digest(checkpoint["model"]),
        "losses_sha256": state_digest(
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
    assert got["model_sha256"] == expected["model_sha256"]
    assert got["losses_sha256"] == expected["losses_sha256"]
    for key in ("final_test_acc", "final_val_acc", "best_val_acc", "best_epoch"):
        assert got[key] == expected[key], key


def test_state_digest_sees_one_changed_value() -> None:
    state = {"w": torch.zeros(3), "b": torch.ones(2)}
    changed = {"w": torch.tensor([0.0, 0.0, 1e-7]), "b": torch.ones(2)}
    assert state_digest(state) != state_digest(changed)
    assert state_digest(state) == state_digest({k: v.clone() for k, v in state.items()})


if __name__ == "__main__":  # rewrite the golden file
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        values = run_golden(Path(scratch) / "run")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(values, indent=1) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
