"""Maintain the tune benchmarks' results files: recompute verdicts, rerun confirmations.

    python tools/tune_results.py --rescore --datasets digits mnist5k
    python tools/tune_results.py --rescore --folder runs/bench-folder/mnist-shift56
    python tools/tune_results.py --rescore --calibration
    python tools/tune_results.py --reconfirm --folder runs/bench-folder/mnist-shift56 --timeout 60m

``--rescore`` recomputes each verdict of ``benchmarks/results/tune_<dataset>.json`` (or, with
``--calibration``, of ``tune_calibration.json``) from the per-fold scores already stored, with
the current test (no training), and records that command and commit under ``rescored``.
``--reconfirm`` reruns the choice and the confirmation of the searches stored by
``benchmarks/bench_tune.py`` (no new trial; its other options as there) and keeps the search's
record beside the reconfirmation's, with what the earlier confirmations said.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common as common  # noqa: E402
import bench_tune as bench  # noqa: E402
import bench_tune_calibration as calibration  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = bench.build_parser()
    parser.description = __doc__.splitlines()[0]
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--rescore", action="store_true",
                      help="recompute the verdicts of the results files from their fold scores")  # fmt: skip
    what.add_argument("--reconfirm", action="store_true",
                      help="rerun the choice and the confirmation of the stored searches with "
                           "this code, no new trial; the search's record is kept")  # fmt: skip
    parser.add_argument("--calibration", action="store_true",
                        help="with --rescore: tune_calibration.json instead of tune_<dataset>.json")  # fmt: skip
    return parser


def finished_trials(out: Path) -> int:
    """The complete and pruned trials of the study stored in ``out``."""
    import optuna

    from chanloss.tuning.storage import STUDY_NAME

    if not (out / "study.db").exists():
        raise SystemExit(f"--reconfirm: no study in {out}; run the search first")
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}")
    return sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False))


def reconfirmed(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a ``--reconfirm`` run) with the search's record of the earlier results file
    (budget, command, wall-clock, machine) kept, and the reconfirmation's beside it, with what
    the earlier confirmations said (``reconfirmed.earlier``, oldest first)."""
    old = common.read_json(path, {})
    out = {**data}
    for key in ("trials_per_search", "timeout", "wall_s", "machine", "command"):
        if key in old:
            out[key] = old[key]
    for loss, entry in out["losses"].items():
        before = old.get("losses", {}).get(loss, {})
        wall_s = entry.pop("search_and_confirm_wall_s")
        entry["reconfirmed"] = common.provenance(data["command"], wall_s=wall_s)
        if "cv" in before:  # what the earlier confirmations said, kept beside the new one
            earlier = before.get("reconfirmed", {}).get("earlier", [])
            entry["reconfirmed"]["earlier"] = [*earlier, {
                "git": before.get("reconfirmed", {}).get("git", old.get("machine", {}).get("git")),
                **{k: before[k] for k in ("cv", "verdict", "agrees", "best_trial") if k in before},
            }]  # fmt: skip
        for key in ("search_and_confirm_wall_s", "run"):
            if key in before:
                entry[key] = before[key]
    return out


def rescore(path: Path, command: str) -> dict[str, Any]:
    """A ``tune_<dataset>.json`` with each verdict recomputed from its per-fold scores."""
    data = common.read_json(path)
    for entry in data["losses"].values():
        if "cv" in entry:
            cv = entry["cv"]
            noise = cv.get("noise", (entry.get("noise") or {}).get("std"))
            entry.update(bench.cv_entry(cv["tuned"], cv["ce"], noise=noise,
                                        resolution=cv.get("resolution", 0.0),
                                        stuck=cv.get("stuck", 0), runs=cv.get("runs", 0)))  # fmt: skip
            if "test" in entry:
                entry["agrees"] = bench.agrees(entry)
    data["rescored"] = common.provenance(command)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.calibration and not args.rescore:
        parser.error("--calibration goes with --rescore")
    args.command = common.command_line(__file__, argv)
    import torch

    from chanloss.core.messages import command_scope

    torch.set_num_threads(1)
    runs, results = common.output_dirs(args, "bench-tune")
    if args.calibration:
        path = results / "tune_calibration.json"
        data = calibration.rescore(path, args.command)
        common.write_json(path, data)
        common.log(f"rescored: null 'no difference' {100 * data['null_no_difference_rate']:.0f} %, "
                   f"positive 'better' {100 * (data['positive_better_rate'] or 0):.0f} %; wrote {path}")  # fmt: skip
        return 0
    if args.rescore:
        return bench.write_results(args, results, lambda path, _: rescore(path, args.command))
    args.finished_trials = finished_trials  # the stored study is the search

    def rerun(path: Path, dataset: str) -> dict[str, Any]:
        return bench.merged(path, reconfirmed(path, bench.run_dataset(dataset, args, runs)))

    with command_scope():  # each repeated note or warning once, as the command line does
        return bench.write_results(args, results, rerun)


if __name__ == "__main__":
    raise SystemExit(main())
