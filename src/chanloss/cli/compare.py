"""``chanloss compare``: several configs over seeds, a table and the verdict."""

from __future__ import annotations

import argparse

from chanloss.cli.arguments import add_jobs, add_set
from chanloss.cli.support import stop_signals_before_training

NAME = "compare"
HELP = "train several configs over seeds and tabulate"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c", "--config", dest="configs", action="append", required=True, help="config file; repeat"
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per config (default 3)")
    add_set(p)
    p.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    add_jobs(p, 1)


def run(args: argparse.Namespace) -> int:
    from chanloss.experiments.comparison import compare, load_labelled, results_table
    from chanloss.experiments.verdict import compare_verdict
    from chanloss.run.builders import preflight

    labelled = load_labelled(args.configs, args.overrides)
    for _, config in labelled:  # every config is checked before the first run starts
        preflight(config)
    with stop_signals_before_training():  # between runs; each run's trainer handles its own
        results = compare(
            labelled,
            seeds=args.seeds,
            out_dir=args.out,
            jobs=args.jobs,
        )
    print(
        f"\n{results_table(results)}\n\n{compare_verdict(results)}\n\nresults in {args.out}",
        flush=True,
    )
    return 0
