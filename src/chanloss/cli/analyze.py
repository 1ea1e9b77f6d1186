"""``chanloss analyze``: separability metrics, CC/MC channel views and t-SNE of checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from chanloss.cli.arguments import int_at_least
from chanloss.core.errors import UsageError

NAME = "analyze"
HELP = "separability metrics, CC/MC channel views and t-SNE of checkpoints"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CHECKPOINT",
        help="last.pt/best.pt of runs, or run directories (their best.pt)",
    )
    p.add_argument("--out", required=True, help="directory for report.html, metrics.csv, PNGs")
    p.add_argument(
        "--max-samples",
        type=int_at_least(3),
        default=1000,
        help="test samples for the separability metrics and t-SNE (default 1000)",
    )
    p.add_argument("--images", type=int_at_least(1), default=4, help="MC-view examples (4)")
    p.add_argument(
        "--label",
        dest="labels",
        action="append",
        metavar="NAME",
        help="name of a run in the report, one per checkpoint in order (default: the config "
        "name, from the run directory); repeat",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from chanloss.analysis import analyze

    if args.labels is not None:
        if len(args.labels) != len(args.checkpoints):
            raise UsageError(
                f"--label was given {len(args.labels)} times for {len(args.checkpoints)} "
                "checkpoints; give one per checkpoint, in order"
            )
        if len(set(args.labels)) < len(args.labels) or not all(args.labels):
            raise UsageError(f"--label names must be unique and non-empty, got {args.labels}")
    analyze(
        args.checkpoints,
        args.out,
        max_samples=args.max_samples,
        images=args.images,
        device=args.device,
        labels=args.labels,
    )
    print(f"report in {Path(args.out) / 'report.html'}", flush=True)
    return 0
