"""Is the verdict of ``chanloss tune``'s k-fold confirmation calibrated? (resumable)

    python benchmarks/bench_tune_calibration.py                   # 20 null + 2 positive repeats
    python benchmarks/bench_tune_calibration.py --null 40 --positive 3 --jobs 2
    python benchmarks/bench_tune_calibration.py --quick           # smoke: results/quick
    python benchmarks/bench_tune_calibration.py --kinds unstable  # the unstable case alone

The tuner's confirmation (:func:`chanloss.tuning.confirm.cross_validate`: paired stratified
5-fold CV, a paired t-test, the corrected p beside it) on pairs whose answer is known:

* **null**: CE (seed ``100 + r``) against CE plus a zero-weight MC-Loss (seed ``200 + r``: the
  same model, other randomness) on digits, a small ConvNet, 12 epochs, folds drawn with
  ``data.split_seed = r``. Should say "no difference" in at least 95 % of the repeats.
* **positive**: CE against CE + MC-Loss with ``chanloss demo``'s settings, same seed, where the
  study found a test gain beyond seed noise. Should say that MC-Loss helps.
* **unstable**: the null pair at SGD lr 6.0 without warm-up (some runs get stuck). Should flag
  them, rerun their fold pairs, and say "unstable" when they recur (never "gain").

Results: ``benchmarks/results/tune_calibration.json`` (per repeat: fold scores, verdict and
what it rests on; the rates; machine). Runs in ``runs/bench-tune-calibration/`` are reused.
``--kinds`` trains only those kinds, keeping the others' rows (rescored);
``tools/tune_results.py --rescore --calibration`` recomputes every verdict of the file.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as common  # noqa: E402

FOLDS = 5
KINDS = ("null", "positive", "unstable")
#: images in the training split of each kind's data (digits: 1,437; finegrained demo: 3,000):
#: one validation image of a fold is FOLDS / TRAIN_SIZE in accuracy (the test's floor)
TRAIN_SIZE = {"null": 1437, "unstable": 1437, "positive": 3000}
UNSTABLE_LR = 6.0
NULL_RAW: dict[str, Any] = {
    "model": {"name": "convnet_small", "width": 8, "feature_channels": 20, "pools": 1},
    "data": {"name": "digits", "val_fraction": 0.0},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "epochs": 12,
    "batch_size": 64,
    "device": "cpu",
}


def unstable_raw() -> dict[str, Any]:
    raw = copy.deepcopy(NULL_RAW)
    raw["optim"]["lr"] = UNSTABLE_LR
    raw["schedule"]["warmup_epochs"] = 0
    return raw


def positive_raw() -> dict[str, Any]:
    from chanloss.experiments.demo import DEMO_CONFIGS

    raw = copy.deepcopy(DEMO_CONFIGS["demo-mc"])
    raw["device"] = "cpu"
    raw["data"]["val_fraction"] = 0.0
    return raw


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--null", type=common.positive_int, default=20, help="null repeats")
    parser.add_argument("--positive", type=int, default=2, help="fine-grained repeats")
    parser.add_argument("--unstable", type=int, default=4, help="unstable-recipe repeats")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                        help="the kinds to train (the file keeps the others' rows)")  # fmt: skip
    parser.add_argument("--jobs", type=common.positive_int, default=1, help="runs at once")
    parser.add_argument("--quick", action="store_true", help="2 null repeats of 2 epochs")
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=None)
    return parser


def _row(kind: str, repeat: int, result: dict[str, Any], seconds: float) -> dict[str, Any]:
    from chanloss.tuning.recommend import decide

    g = result["gain"]
    verdict = "no difference" if not g["beyond"] else ("better" if g["diff"] > 0 else "worse")
    stuck = result.get("stuck", [])
    runs = result.get("runs", 2 * FOLDS)
    extra = {"stuck": stuck, "runs": runs, "reruns": result.get("reruns", []),
             "answer": decide(g, stuck=len(stuck), runs=runs)["answer"]}  # fmt: skip
    if "first" in result:
        extra["first"] = result["first"]
    return {
        **extra,
        "kind": kind,
        "repeat": repeat,
        "tuned": result["tuned"],
        "ce": result["ce"],
        **{key: g[key] for key in ("diff", "threshold", "detectable", "p", "p_corrected")},
        "verdict": verdict,
        "wall_s": round(seconds, 1),
    }


def _rates(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    def rate(kind: str, test: Any) -> float | None:
        of = [row for row in rows if row["kind"] == kind]
        return sum(bool(test(row)) for row in of) / len(of) if of else None

    return {
        "null_no_difference_rate": rate("null", lambda r: r["verdict"] == "no difference"),
        "positive_better_rate": rate("positive", lambda r: r["verdict"] == "better"),
        "unstable_flagged_rate": rate("unstable", lambda r: r["stuck"]),
        "unstable_answer_rate": rate("unstable", lambda r: r["answer"] == "unstable"),
        "unstable_gain_rate": rate("unstable", lambda r: r["answer"] == "gain"),
    }


def rescore(path: Path, command: str) -> dict[str, Any]:
    """The results file with every verdict recomputed from its per-fold scores."""
    from chanloss.tuning.stats import paired_fold_test

    data = common.read_json(path)
    data["rows"] = [
        _row(row["kind"], row["repeat"],
             {**{k: row[k] for k in ("stuck", "runs", "reruns", "first") if k in row},
              "tuned": row["tuned"], "ce": row["ce"],
              "gain": paired_fold_test(row["tuned"], row["ce"],
                                       resolution=FOLDS / TRAIN_SIZE[row["kind"]])},
             row["wall_s"])
        for row in data["rows"]
    ]  # fmt: skip
    data.update(_rates(data["rows"]))
    data["rescored"] = common.provenance(command)
    return data


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = common.command_line(__file__, argv)
    import torch

    torch.set_num_threads(1)
    runs, results_dir = common.output_dirs(args, "bench-tune-calibration")
    path = results_dir / "tune_calibration.json"
    start = time.perf_counter()
    counts = {"null": 2 if args.quick else args.null, "positive": 0 if args.quick else args.positive,
              "unstable": 0 if args.quick else args.unstable}  # fmt: skip
    kept = []  # the rows of the kinds not trained now, from the file (rescored)
    if set(args.kinds) != set(KINDS) and path.exists():
        kept = [r for r in rescore(path, command)["rows"] if r["kind"] not in args.kinds]
    rows = []
    for kind in args.kinds:
        for r in range(counts[kind]):
            t0 = time.perf_counter()
            res = _repeat(kind, r, args, runs)
            rows.append(_row(kind, r, res, time.perf_counter() - t0))
            g = res["gain"]
            common.log(f"{kind} {r}: {rows[-1]['verdict']}, answer {rows[-1]['answer']} (diff "
                       f"{100 * g['diff']:+.2f}, threshold {100 * g['threshold']:.2f}, p {g['p']:.2f}; "
                       f"{len(res['stuck'])} stuck)")  # fmt: skip
    rows = sorted(kept + rows, key=lambda row: (KINDS.index(row["kind"]), row["repeat"]))
    data = {
        "quick": args.quick,
        "folds": FOLDS,
        "null_config": NULL_RAW,
        "positive_config": positive_raw(),
        "unstable_config": unstable_raw(),
        "rows": rows,
        **_rates(rows),
        "jobs": args.jobs,
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": common.machine_info("cpu"),
        "command": command,
    }
    if kept:
        old = common.read_json(path)
        data["earlier"] = {k: old.get(k) for k in ("command", "wall_s", "machine")}
        data["earlier"]["kinds"] = sorted({r["kind"] for r in kept})
    common.write_json(path, data)
    common.log(f"null 'no difference' {100 * data['null_no_difference_rate']:.0f} %, positive "
               f"'better' {100 * (data['positive_better_rate'] or 0):.0f} %, unstable flagged "
               f"{100 * (data['unstable_flagged_rate'] or 0):.0f} % / 'unstable' "
               f"{100 * (data['unstable_answer_rate'] or 0):.0f} %; {data['wall_s']:.0f} s; "
               f"wrote {path}")  # fmt: skip
    return 0


def _repeat(kind: str, r: int, args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    """One repeat's cross-validation of the pair of ``kind`` (see the module docstring)."""
    from chanloss.tuning.confirm import cross_validate

    out = runs / kind / f"repeat{r:02d}"
    if kind == "positive":
        mc = positive_raw()
        mc["data"]["split_seed"] = r
        mc["seed"] = 300 + r
        ce = {**copy.deepcopy(mc), "losses": [{"name": "ce"}]}
        return cross_validate(mc, ce, FOLDS, out, jobs=args.jobs, names=("ce+mc", "ce"),
                              train_size=TRAIN_SIZE[kind])  # fmt: skip
    base = copy.deepcopy(NULL_RAW) if kind == "null" else unstable_raw()
    if args.quick:
        base["epochs"] = 2
    base["data"]["split_seed"] = r
    offset = 100 if kind == "null" else 400  # the unstable pairs on seeds of their own
    ce = {**copy.deepcopy(base), "losses": [{"name": "ce"}], "seed": offset + r}
    zero = {**copy.deepcopy(base), "seed": offset + 100 + r,
            "losses": [{"name": "ce"}, {"name": "mc", "weight": 0.0}]}  # fmt: skip
    return cross_validate(zero, ce, FOLDS, out, jobs=args.jobs, names=("ce+mc0", "ce"),
                          train_size=TRAIN_SIZE[kind])  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
