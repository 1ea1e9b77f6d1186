"""Rewrite the results block of ``docs/results.md`` from the files in ``benchmarks/results/``
(``make report``).

Only the text between ``<!-- results:start -->`` and ``<!-- results:end -->`` is replaced (the
markers are appended to the page when it has none). Sources:

- ``study_<dataset>.csv`` / ``.json`` (``benchmarks/study/run_study.py``): final test accuracy,
  mean +- sample std over seeds, per loss and data set; ``study_sweep-<dataset>.json``: the
  CC/MC values chosen on validation; ``study_*_curves.png``;
- ``train_step_<device>.json``: CE vs CE+CC vs CE+MC training-step times and ratios;
- ``losses_<device>.json``: forward+backward time and peak memory of every loss;
- ``scaling_<device>.json`` / ``.png``; ``cc_loss_cpu.json`` and ``mc_loss_cpu.json``;
- ``cc_round3.json`` / ``cc_grad_share.json``: CC-Loss's gate and branch readings against CE
  and the SE-gate control (``results_cc_round3.py``);
- ``tune_<dataset>.json`` (``benchmarks/bench_tune.py``): tune's verdict against the test
  split; ``tune_calibration.json`` (``benchmarks/bench_tune_calibration.py``): its calibration.

Files from ``--quick`` runs (``results/quick/`` or ``"quick": true``) are ignored. The block
names the machine and commit of every source and says plainly where CC-Loss or MC-Loss does
not beat cross-entropy.

    python tools/results_page.py                 # rewrite docs/results.md
    python tools/results_page.py --print         # print the block only
    python tools/results_page.py --check         # exit 1 when docs/results.md is out of date
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

TOOLS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS_DIR))

from results_cc_round3 import cc_round3_section  # noqa: E402
from results_format import machine_line  # noqa: E402
from results_prune import prune_section  # noqa: E402
from results_speed import _data_line, cc_forms_section, speed_section  # noqa: E402
from results_study import study_section, tune_section, verdict  # noqa: E402

from chanloss.core.atomic import write_text  # noqa: E402

__all__ = [
    "_data_line",
    "load",
    "machine_line",
    "main",
    "prune_section",
    "render",
    "replace_block",
    "verdict",
]

REPO_ROOT = TOOLS_DIR.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
START = "<!-- results:start -->"
END = "<!-- results:end -->"


def _read_json(path: Path, include_quick: bool = False) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or (data.get("quick") and not include_quick):
        return None
    return data


def _float(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


def read_study(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``study_<part>.csv`` with numbers parsed."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("test_acc_mean", "test_acc_std", "train_time_mean_s"):
            row[key] = _float(row.get(key))
        for key in ("seeds", "finished_seeds", "diverged_seeds", "epochs"):
            row[key] = int(row[key]) if row.get(key) else 0
        row["params"] = json.loads(row["params"]) if row.get("params") else {}
    return rows


def load(results: Path, *, include_quick: bool = False) -> dict[str, Any]:
    """Everything the report uses, keyed by kind; missing files are simply absent."""
    found: dict[str, Any] = {"study": {}, "sweeps": {}, "speed": {}}
    for path in sorted(results.glob("study_*.json")):
        meta = _read_json(path, include_quick)
        if meta is None:
            continue
        part = meta.get("part", path.stem.removeprefix("study_"))
        csv_path = path.with_suffix(".csv")
        png = results / f"study_{part}_curves.png"
        entry = {"meta": meta, "png": png if png.exists() else None}
        if meta.get("kind") == "sweep":
            found["sweeps"][meta["dataset"]] = entry
        elif csv_path.exists():
            entry["rows"] = read_study(csv_path)
            found["study"][meta.get("column", meta["dataset"])] = entry
    found["tune"] = {}
    for path in sorted(results.glob("tune_*.json")):
        data = _read_json(path, include_quick)
        if data is not None and "dataset" in data:
            found["tune"][data["dataset"]] = data
    calibration = results / "tune_calibration.json"
    found["tune_calibration"] = (
        _read_json(calibration, include_quick) if calibration.exists() else None
    )
    for name in ("train_step", "losses", "scaling"):
        for path in sorted(results.glob(f"{name}_*.json")):
            data = _read_json(path, include_quick)
            if data is not None:
                png = path.with_suffix(".png")
                data["_png"] = png if png.exists() else None
                found["speed"].setdefault(name, []).append(data)
    for name in ("cc_loss_cpu", "mc_loss_cpu", "data_cpu", "gpu_check_cuda"):
        data = _read_json(results / f"{name}.json", include_quick)
        if data is not None:
            found["speed"][name] = [data]
    prune = _read_json(results / "prune_cpu.json", include_quick)
    if prune is not None and prune.get("rows"):
        found["prune"] = {**prune, "latency": _read_json(results / "prune_latency_cpu.json")}
    cc_forms = _read_json(results / "cc_forms.json", include_quick)
    if cc_forms is not None and cc_forms.get("rows"):
        found["cc_forms"] = cc_forms
    for name in ("cc_round3", "cc_grad_share"):
        found[name] = _read_json(results / f"{name}.json", include_quick)
    return found


def render(found: dict[str, Any], base: Path) -> str:
    """The block between the markers (markers included)."""
    lines = [
        START,
        "## Results",
        "",
        "_Generated by `make report` (`tools/results_page.py`) from `benchmarks/results/`; "
        "edits inside this block are overwritten._",
        "",
        *study_section(found, base),
        *tune_section(found),
        *cc_round3_section(found.get("cc_round3"), found.get("cc_grad_share")),
        *cc_forms_section(found),
        *prune_section(found.get("prune"), machine_line),
        *speed_section(found, base),
        END,
    ]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with the marked block replaced (or appended when there are no markers)."""
    start, end = text.find(START), text.find(END)
    if start == -1 and end == -1:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    if start == -1 or end == -1 or end < start:
        raise SystemExit(f"the page has a broken results block: need {START} before {END}")
    return text[:start] + block + text[end + len(END) :]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--readme",
        "--page",
        dest="readme",
        type=Path,
        default=REPO_ROOT / "docs" / "results.md",
        help="the page holding the results block (default docs/results.md)",
    )
    parser.add_argument(
        "--include-quick", action="store_true", help="also use results of --quick runs"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print", action="store_true", help="print the block, change nothing")
    mode.add_argument("--check", action="store_true", help="exit 1 if the page is out of date")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    found = load(args.results, include_quick=args.include_quick)
    block = render(found, args.readme.resolve().parent)
    if args.print:
        print(block)
        return 0
    text = args.readme.read_text() if args.readme.exists() else ""
    new = replace_block(text, block)
    if args.check:
        if new != text:
            print(f"{args.readme} is out of date; run make report", file=sys.stderr)
            return 1
        return 0
    if new != text:
        write_text(args.readme, new)
    print(f"{'updated' if new != text else 'unchanged'}: {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
