"""Golden commands: a fixed-seed ``tune --trials 3`` and two fixed-seed ``prune`` runs whose
decisions must stay the same across refactors of the code above one run (issue 34, "behaviour
unchanged").

The golden values in ``golden/commands.json`` were written by the code before the refactor
(``PYTHONPATH=src:tests python tests/experiments/test_golden_commands.py`` rewrites them; do that only for an
intended change of behaviour, and say so in the commit). Compared: the tune verdict fields (the
answer, the file to use, the best trial and its parameters, the stuck runs, the confirmation's
scores to 4 decimals) and, for each prune, the kept channel indices of every pruned layer, the
MACs and which model was kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from chanloss.cli import main

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "commands.json"
CONFIG = {
    "model": {"name": "convnet_small", "width": 8, "feature_channels": 20, "pools": 1},
    "data": {"name": "digits", "val_fraction": 0.2},
    "losses": [{"name": "ce"}, {"name": "mc", "weight": 0.1}],
    "optim": {"lr": 0.1},
    "schedule": {"name": "constant"},
    "epochs": 4,
    "batch_size": 128,
    "device": "cpu",
    "seed": 5,
}


def rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]


def tune_fields(out: Path) -> dict[str, Any]:
    """What a ``tune --trials 3`` decided, from its tune.json."""
    tune = json.loads((out / "tune.json").read_text())
    confirmation = tune["confirmation"]
    return {
        "best_trial": tune["best"]["trial"],
        "best_params": tune["best"]["params"],
        "answer": tune["verdict"]["answer"],
        "use": tune["verdict"]["use"],
        "stuck": [(s["fold"], s["arm"], s["seed"]) for s in tune["stuck"]["confirmation"]],
        "val_tuned": rounded(confirmation["val"]["tuned"]),
        "val_ce": rounded(confirmation["val"]["ce"]),
    }


def prune_fields(out: Path) -> dict[str, Any]:
    """What a prune decided: kept channels per layer, MACs, and the model kept."""
    report = json.loads((out / "prune.json").read_text())
    record = torch.load(out / "pruned.pt", map_location="cpu", weights_only=True)["pruning"]
    return {
        "layers": [[layer["name"], layer["total"], layer["kept"]] for layer in record["layers"]],
        "macs": report["macs"],
        "kept_model": report["kept"]["which"],
    }


def run_commands(work: Path) -> dict[str, Any]:
    """Run the golden commands in ``work`` and return what the golden file records."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    tune_args = ["tune", "-c", str(config), "--out", str(work / "tune")]
    assert main([*tune_args, "--trials", "3", "--folds", "3", "--top", "2"]) == 0
    assert main(["train", "-c", str(config), "--out", str(work / "run"), "-q"]) == 0
    checkpoint = str(work / "run" / "last.pt")
    cpli = ["prune", checkpoint, "--out", str(work / "cpli"), "-q", "--set", "prune.round_to=1"]
    assert main(cpli) == 0
    l1 = ["prune", checkpoint, "--out", str(work / "l1"), "-q", "--method", "l1"]
    assert main([*l1, "--speedup", "1.3", "--finetune-epochs", "1"]) == 0
    return {
        "tune": tune_fields(work / "tune"),
        "prune_cpli": prune_fields(work / "cpli"),
        "prune_l1": prune_fields(work / "l1"),
    }


def test_golden_commands_decide_the_same(tmp_path: Path) -> None:
    expected = json.loads(GOLDEN.read_text())
    got = json.loads(json.dumps(run_commands(tmp_path)))  # tuples as lists, like the file
    assert got == expected


if __name__ == "__main__":  # rewrite the golden file
    import tempfile

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as scratch:
        values = run_commands(Path(scratch))
    GOLDEN.write_text(json.dumps(values, indent=1) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
