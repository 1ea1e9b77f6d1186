"""``chanloss demo``: CE against CE + MC-Loss on a fine-grained set, over seeds."""

from __future__ import annotations

import argparse

from chanloss.cli.arguments import add_jobs, add_set
from chanloss.cli.support import stop_signals_before_training

NAME = "demo"
HELP = "CE vs CE + MC-Loss on a fine-grained set, 3 seeds, 2 runs at a time"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per loss (default 3)")
    add_set(p)
    add_jobs(p, 2)


def run(args: argparse.Namespace) -> int:
    from chanloss.experiments.demo import run_demo

    with stop_signals_before_training():
        run_demo(args.out, seeds=args.seeds, overrides=args.overrides, jobs=args.jobs)
    return 0
