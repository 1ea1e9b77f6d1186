"""Does ``chanloss tune``'s verdict agree with the test split? (resumable)

    python benchmarks/bench_tune.py                          # digits and mnist5k (BUDGETS below)
    python benchmarks/bench_tune.py --datasets digits --trials 8 --jobs 2
    python benchmarks/bench_tune.py --quick                  # smoke: results/quick, runs/bench-tune-quick
    python tools/make_image_folder.py                   # a held-out folder, then:
    python benchmarks/bench_tune.py --folder runs/bench-folder/mnist-shift56 --timeout 60m

Per data set (the study's recipe, ConvNet width 8, ``data.val_fraction = 0.2``, the epochs of
``BUDGETS``: each JSON records CE's validation gain over the last quarter of the epochs) and
loss, ``chanloss tune`` runs as a user would (search on validation with the noise pruner, the
3 best re-run, the paired 5-fold confirmation against CE and its verdict). To check the verdict,
CE and the chosen setting are trained on the whole training split over seeds 11, 12, 13 and
scored once on test (two-standard-error rule). ``--folder ROOT`` does the same on an image
folder (``train/``, ``test/``; ``FOLDER_RECIPE``) with ``--timeout`` as each tune's budget.

Results: ``benchmarks/results/tune_<dataset>.json`` (per loss: choice, trials, noise, both
verdicts and whether they agree; machine). Runs in ``runs/bench-tune/<dataset>/`` are reused.
``tools/tune_results.py`` has ``--rescore`` (verdicts recomputed) and ``--reconfirm``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as common  # noqa: E402

#: The budget per data set: epochs of every run, trials of each search, the losses tuned.
BUDGETS: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 20, "trials": 10, "losses": ["mc", "cc"]},
    "mnist5k": {"epochs": 10, "trials": 8, "losses": ["mc"]},
}
WIDTH = 8
#: ``--folder``: the recipe of the folder the tune issue was reported on (4,000 train images).
FOLDER_RECIPE: dict[str, Any] = {
    "model": {"name": "convnet_small", "width": 8, "feature_channels": 30},
    "data": {"name": "image_folder", "val_fraction": 0.1},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "epochs": 15,
    "device": "cpu",
    "seed": 0,
}
VAL_FRACTION = 0.2
TEST_SEEDS = (11, 12, 13)
FOLDS = 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets", nargs="+", default=list(BUDGETS), choices=list(common.STUDY_RECIPES)
    )
    parser.add_argument("--trials", type=common.positive_int, default=None, help="per search")
    parser.add_argument("--epochs", type=common.positive_int, default=None, help="every run")
    parser.add_argument("--jobs", type=common.positive_int, default=1, help="runs at once")
    parser.add_argument("--losses", nargs="+", choices=["cc", "mc"], default=None,
                        help="instead of each data set's BUDGETS losses")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="2 epochs, 3 trials, 2 folds")
    parser.add_argument("--runs", type=Path, default=None, help="default runs/bench-tune")
    parser.add_argument("--results", type=Path, default=None, help="default benchmarks/results")
    parser.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="an image folder (train/, test/) instead of --datasets",
    )
    parser.add_argument("--timeout", type=str, default=None,
                        help="budget of each tune, e.g. 60m (instead of --trials)")  # fmt: skip
    return parser


def base_raw(dataset: str, epochs: int) -> dict[str, Any]:
    raw = copy.deepcopy(common.STUDY_RECIPES[dataset])
    raw["model"]["width"] = WIDTH
    raw["data"]["val_fraction"] = VAL_FRACTION
    raw["epochs"] = epochs
    raw["device"] = "cpu"
    raw["seed"] = 0
    return raw


def ce_convergence(out: Path) -> float | None:
    """CE's mean gain in validation accuracy over the last quarter of the epochs, over the
    confirmation's folds (near 0: converged)."""
    gains = []
    for path in sorted((out / "confirm" / "ce").glob("fold*/confirm.json")):
        curve = common.read_json(path)["curve"]
        if len(curve) >= 4:
            gains.append(curve[-1] - curve[-(len(curve) // 4) - 1])
    return statistics.mean(gains) if gains else None


def run_loss(dataset: str, loss: str, base: dict[str, Any], args: argparse.Namespace,
             runs: Path, trials: int, folds: int) -> dict[str, Any]:  # fmt: skip
    from chanloss.config import load_config
    from chanloss.tuning import parse_duration, tune

    raw = {**copy.deepcopy(base), "losses": [{"name": "ce"}, {"name": loss}]}
    out = runs / dataset / f"tune-{loss}"
    t0 = time.perf_counter()
    timeout = parse_duration(args.timeout) if args.timeout else None
    stored = getattr(args, "finished_trials", None)  # tools/tune_results.py --reconfirm
    if stored:  # the stored study is the search: as many trials as it has finished
        trials, timeout = stored(out), None
    summary = tune(load_config(raw=raw), out, trials=None if timeout else trials,
                   timeout_s=timeout, jobs=args.jobs, folds=folds,
                   resume=(out / "study.db").exists(), log=common.log)  # fmt: skip
    search_s = time.perf_counter() - t0
    counts = summary["counts"]
    entry: dict[str, Any] = {
        "counts": counts,
        "noise": summary["noise"],
        "learned": summary["learned"],
        "search_and_confirm_wall_s": round(search_s, 1),
        "search_s": summary.get("search_s"),
        "ce_gain_last_quarter": ce_convergence(out),
        "stuck": {k: len(v) for k, v in summary.get("stuck", {}).items()},
    }
    if summary.get("search_s"):  # trials this invocation's search finished, per hour
        entry["trials_per_hour"] = round(
            3600 * (counts["COMPLETE"] + counts["PRUNED"]) / summary["search_s"], 1
        )
    if summary["best"] is None:
        return entry
    conf = summary["confirmation"]
    entry.update(
        chosen={k.split(".", 1)[1]: v for k, v in summary["best"]["params"].items()},
        best_trial=summary["best"]["trial"],
        reruns=summary["reruns"],
        **cv_entry(
            conf["val"]["tuned"],
            conf["val"]["ce"],
            noise=summary["noise"]["std"],
            resolution=conf["val"].get("resolution", 0.0),
            stuck=len(conf["stuck"]),
            runs=conf["runs"],
        ),  # fmt: skip
    )
    entry["cv"]["reruns"] = conf["val"].get("reruns", [])
    assert entry["answer"] == summary["verdict"]["answer"], (entry["answer"], summary["verdict"])
    from chanloss.config import yaml_load

    tuned = yaml_load((out / "best.yaml").read_text())
    entry["test"] = test_check(tuned, base, loss, args, runs / dataset)
    entry["agrees"] = agrees(entry)
    return entry


def test_check(tuned: dict[str, Any], base: dict[str, Any], loss: str,
               args: argparse.Namespace, where: Path) -> dict[str, Any]:  # fmt: skip
    """The tuned setting and CE alone trained on the whole training split over fresh seeds,
    each scored once on test, and the gain between them (two-standard-error rule)."""
    from chanloss.tuning import confirm_runs, gain_over

    seeds = TEST_SEEDS[:1] if args.quick else TEST_SEEDS
    ce = {**copy.deepcopy(base), "losses": [{"name": "ce"}]}
    tasks, labels = [], []
    for label, cfg, name in (("tuned", tuned, f"test-{loss}"), ("ce", ce, "test-ce")):
        for seed in seeds:
            raw = {**copy.deepcopy(cfg), "seed": seed, "device": "cpu"}
            raw["data"]["val_fraction"] = 0.0
            tasks.append((raw, where / name / f"seed{seed}"))
            labels.append(f"{label} (test check)")
    done = confirm_runs(tasks, jobs=args.jobs, log=common.log, labels=labels)
    a, b = [r.test_acc for r in done[: len(seeds)]], [r.test_acc for r in done[len(seeds) :]]
    return {"tuned": a, "ce": b, **gain_over(a, b)}


def cv_entry(tuned: list[float], ce: list[float], *, noise: float | None = None,
             resolution: float = 0.0, stuck: int = 0, runs: int = 0) -> dict[str, Any]:  # fmt: skip
    """The cross-validated gain of per-fold scores (those the verdict used: reruns in place of
    stuck pairs), the tuner's verdict for it (``answer`` and its text) and what it rests on."""
    from chanloss.tuning.recommend import decide
    from chanloss.tuning.stats import paired_fold_test

    g = paired_fold_test(tuned, ce, noise=noise, resolution=resolution)
    keys = ("diff", "threshold", "detectable", "p", "beyond", "p_corrected", "beyond_corrected",
            "floor")  # fmt: skip
    verdict = decide(g, noise=noise, stuck=stuck, runs=runs)
    return {
        "cv": {
            "tuned": tuned,
            "ce": ce,
            **{k: g.get(k) for k in keys},
            "noise": noise,
            "resolution": resolution,
            "stuck": stuck,
            "runs": runs,
        },  # fmt: skip
        "verdict": verdict["text"],
        "answer": verdict["answer"],
    }


def agrees(entry: dict[str, Any]) -> bool:
    """Whether the verdict holds against the test check: a gain on test is answered "gain",
    "cannot tell" or "unstable"; no gain on test is answered anything but "gain"."""
    test = entry["test"]
    test_gain = bool(test["beyond"]) and test["diff"] > 0
    answer = entry.get("answer")
    if answer is None:  # a file written before the five answers
        cv = entry["cv"]
        answer = "gain" if cv["beyond"] and cv["diff"] > 0 else "no difference"
    if test_gain:
        return answer in ("gain", "cannot tell", "unstable")
    return answer != "gain"


def merged(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the losses this run did not tune from an earlier file of the same recipe
    (``--losses mc`` and ``--losses cc`` side by side), each with its own run's record."""
    old = common.read_json(path, {})
    if old.get("recipe") != data["recipe"] or old.get("quick") != data["quick"]:
        return data
    for loss, entry in old.get("losses", {}).items():
        if loss not in data["losses"]:
            entry.setdefault("run", {k: old.get(k) for k in ("command", "wall_s", "machine")})
            data["losses"][loss] = entry
    return data


def folder_raw(root: Path, epochs: int | None) -> dict[str, Any]:
    raw = copy.deepcopy(FOLDER_RECIPE)
    raw["data"]["root"] = str(root.resolve())
    raw["epochs"] = epochs or raw["epochs"]
    return raw


def run_dataset(dataset: str, args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    default_epochs = (
        FOLDER_RECIPE["epochs"] if args.folder else common.STUDY_RECIPES[dataset]["epochs"]
    )
    budget = BUDGETS.get(dataset, {"epochs": default_epochs, "trials": 8, "losses": ["mc"]})
    epochs = args.epochs or (2 if args.quick else budget["epochs"])
    trials = args.trials or (3 if args.quick else budget["trials"])
    folds = 2 if args.quick else FOLDS
    start = time.perf_counter()
    base = folder_raw(args.folder, epochs) if args.folder else base_raw(dataset, epochs)
    losses = {loss: run_loss(dataset, loss, base, args, runs, trials, folds)
              for loss in args.losses or budget["losses"]}  # fmt: skip
    return {
        "dataset": dataset,
        "quick": args.quick,
        "recipe": {k: v for k, v in base.items() if k != "device"},
        "epochs": epochs,
        "trials_per_search": None if args.timeout else trials,
        "timeout": args.timeout,
        "folds": folds,
        "pruner": "noise",
        "jobs": args.jobs,
        "test_seeds": list(TEST_SEEDS),
        "val_fraction": base["data"]["val_fraction"],
        "losses": losses,
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": common.machine_info("cpu"),
        "command": args.command,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command = common.command_line(__file__, argv)
    import torch

    from chanloss.core.messages import command_scope

    torch.set_num_threads(1)
    runs, results = common.output_dirs(args, "bench-tune")

    with command_scope():  # each repeated note or warning once, as the command line does
        return write_results(
            args, results, lambda path, dataset: merged(path, run_dataset(dataset, args, runs))
        )


def write_results(args: argparse.Namespace, results: Path,
                  make: Callable[[Path, str], dict[str, Any]]) -> int:  # fmt: skip
    """Write ``make(path, dataset)`` to each data set's ``tune_<dataset>.json`` and log it."""
    for dataset in [args.folder.name] if args.folder else args.datasets:
        path = results / f"tune_{dataset}.json"
        data = make(path, dataset)
        common.write_json(path, data)
        for loss, e in data["losses"].items():
            if "test" in e:
                common.log(f"{dataset} {loss}: verdict: {e['verdict']}; test {100 * e['test']['diff']:+.2f} "
                           f"(2 SE {200 * e['test']['se']:.2f}); agrees: {e['agrees']}")  # fmt: skip
        common.log(f"{dataset}: {data['wall_s']:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
