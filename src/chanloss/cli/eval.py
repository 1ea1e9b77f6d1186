"""``chanloss eval``: top-1/top-5, per-class accuracy and the confusion matrix of a checkpoint."""

from __future__ import annotations

import argparse

from chanloss.cli.arguments import add_checkpoint

NAME = "eval"
HELP = "top-1/top-5, per-class accuracy and confusion matrix"


def configure(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p)
    p.add_argument(
        "--out",
        help="output directory; the files go to OUT/<split>/ (default OUT: <run dir>/eval-<checkpoint name>)",
    )
    p.add_argument("--split", default="test", choices=("test", "val"), help="the split to evaluate")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from chanloss.analysis.evaluate import evaluate_checkpoint

    evaluate_checkpoint(args.checkpoint, args.out, split=args.split, device=args.device)
    return 0
