"""Does ``chanloss tune`` pick better CC-Loss / MC-Loss settings than the defaults? (resumable)

    python benchmarks/bench_tune.py                          # digits and mnist5k (BUDGETS below)
    python benchmarks/bench_tune.py --datasets digits --trials 8 --epochs 10 --jobs 2
    python benchmarks/bench_tune.py --quick                  # smoke: results/quick, runs/bench-tune-quick

For each data set (the study's recipe from ``benchmarks/study/parts.py``, with
``data.val_fraction = 0.2`` and the epochs of ``BUDGETS``) and each of CE + CC-Loss and
CE + MC-Loss, ``chanloss tune`` searches the loss's default space with a fixed budget of trials
on the validation split (median pruner, no confirmation). Then five configs are trained over
the same fresh seeds (1, 2, 3): CE alone, CE + CC and CE + MC at their defaults, and CE + CC and
CE + MC with the chosen settings; each run's final model is scored once on the test split. All
runs train on the same 80 % of the training split, so the numbers compare with each other, not
with the study's (which trains on all of it).

Results: ``benchmarks/results/tune_<dataset>.json`` (chosen settings, trials complete/pruned,
the test accuracies per seed, wall-clock of the search and of the whole data set, machine and
commit). Runs live in ``runs/bench-tune/<dataset>/``; a second invocation reuses finished
trials and runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "study"))

import _common as common  # noqa: E402
import parts as P  # noqa: E402

#: The budget per data set: epochs of every run, trials of each search. Chosen so that both
#: data sets fit in about 40 minutes on 2 CPU cores shared with other work (digits took 16
#: minutes with 2 jobs; see each JSON's wall-clock): short schedules, small searches.
BUDGETS: dict[str, dict[str, int]] = {
    "digits": {"epochs": 10, "trials": 8},
    "mnist5k": {"epochs": 3, "trials": 6},
}
LOSSES = ("cc", "mc")
VAL_FRACTION = 0.2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(BUDGETS), choices=list(P.BASES))
    parser.add_argument("--trials", type=common.positive_int, default=None, help="per search")
    parser.add_argument("--epochs", type=common.positive_int, default=None, help="every run")
    parser.add_argument("--seeds", type=common.positive_int, default=3, help="seeds 1..N")
    parser.add_argument("--jobs", type=common.positive_int, default=1, help="runs at once")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 2 trials, 1 seed")
    parser.add_argument("--runs", type=Path, default=None, help="default runs/bench-tune")
    parser.add_argument("--results", type=Path, default=None, help="default benchmarks/results")
    return parser


def base_raw(dataset: str, epochs: int) -> dict[str, Any]:
    raw = copy.deepcopy(P.BASES[dataset])
    raw["data"]["val_fraction"] = VAL_FRACTION
    raw["epochs"] = epochs
    raw["device"] = "cpu"
    raw["seed"] = 0
    return raw


def mean_std(values: list[float]) -> dict[str, Any]:
    mean, std = P.mean_std(values)
    return {"accs": values, "mean": mean, "std": std}


def run_dataset(dataset: str, args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    from chanloss.training import load_config
    from chanloss.tuning import confirm_runs, gain_over, tune

    budget = BUDGETS.get(dataset, {"epochs": P.BASES[dataset]["epochs"], "trials": 8})
    epochs = args.epochs or (1 if args.quick else budget["epochs"])
    trials = args.trials or (2 if args.quick else budget["trials"])
    seeds = [1 + i for i in range(1 if args.quick else args.seeds)]
    start = time.perf_counter()
    base = base_raw(dataset, epochs)
    searches: dict[str, Any] = {}
    configs: dict[str, dict[str, Any]] = {"ce": {**base, "losses": [{"name": "ce"}]}}
    for loss in LOSSES:
        raw = {**copy.deepcopy(base), "losses": [{"name": "ce"}, {"name": loss}]}
        out = runs / dataset / f"tune-{loss}"
        t0 = time.perf_counter()
        summary = tune(
            load_config(raw=raw),
            out,
            trials=trials,
            jobs=args.jobs,
            confirm_seeds=0,
            resume=(out / "study.db").exists(),
            log=common.log,
        )
        best = yaml_load((out / "best.yaml").read_text())
        searches[loss] = {
            "space": summary["space"],
            "chosen": {k.split(".", 1)[1]: v for k, v in summary["best"]["params"].items()},
            "best_trial": summary["best"]["trial"],
            "best_val_acc": summary["best"]["val_acc"],
            "complete": summary["counts"]["COMPLETE"],
            "pruned": summary["counts"]["PRUNED"],
            "failed": summary["counts"]["FAIL"],
            "search_wall_s": round(time.perf_counter() - t0, 1),
        }
        configs[f"{loss}-default"] = raw
        configs[f"{loss}-tuned"] = best
    tasks, labels = [], []
    for label, raw in configs.items():
        for seed in seeds:
            tasks.append(
                ({**copy.deepcopy(raw), "seed": seed}, runs / dataset / label / f"seed{seed}")
            )
            labels.append(label)
    common.log(
        f"{dataset}: {len(tasks)} evaluation runs ({len(configs)} configs x {len(seeds)} seeds)"
    )
    done = confirm_runs(tasks, jobs=args.jobs, log=common.log, labels=labels)
    results: dict[str, Any] = {}
    for label in configs:
        picked = [r for lab, r in zip(labels, done, strict=True) if lab == label]
        results[label] = {
            "test": mean_std([r["test_acc"] for r in picked]),
            "val": mean_std([r["val_acc"] for r in picked]),
        }
    comparisons = {}
    for loss in LOSSES:
        tuned = results[f"{loss}-tuned"]["test"]["accs"]
        comparisons[loss] = {
            "tuned_vs_default": gain_over(tuned, results[f"{loss}-default"]["test"]["accs"]),
            "tuned_vs_ce": gain_over(tuned, results["ce"]["test"]["accs"]),
            "default_vs_ce": gain_over(
                results[f"{loss}-default"]["test"]["accs"], results["ce"]["test"]["accs"]
            ),
        }
    return {
        "dataset": dataset,
        "quick": args.quick,
        "recipe": {k: v for k, v in base.items() if k != "device"},
        "epochs": epochs,
        "trials_per_search": trials,
        "pruner": "median",
        "jobs": args.jobs,
        "seeds": seeds,
        "val_fraction": VAL_FRACTION,
        "searches": searches,
        "results": results,
        "comparisons": comparisons,
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": common.machine_info("cpu"),
        "command": " ".join(["python", "benchmarks/bench_tune.py", *sys.argv[1:]]),
    }


def yaml_load(text: str) -> Any:
    from chanloss.training.config import yaml_load as load

    return load(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    common.import_all_losses()
    torch.set_num_threads(1)
    runs = args.runs or common.REPO_ROOT / (
        "runs/bench-tune-quick" if args.quick else "runs/bench-tune"
    )
    results = args.results or (common.QUICK_DIR if args.quick else common.RESULTS_DIR)
    for dataset in args.datasets:
        data = run_dataset(dataset, args, runs)
        path = results / f"tune_{dataset}.json"
        common.write_json(path, data)
        for loss in data["comparisons"]:
            r = data["results"]
            common.log(
                f"{dataset} {loss}: CE {100 * r['ce']['test']['mean']:.2f}, default "
                f"{100 * r[f'{loss}-default']['test']['mean']:.2f}, tuned "
                f"{100 * r[f'{loss}-tuned']['test']['mean']:.2f} "
                f"(chosen {json.dumps(data['searches'][loss]['chosen'])})"
            )
        common.log(f"{dataset}: {data['wall_s']:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
