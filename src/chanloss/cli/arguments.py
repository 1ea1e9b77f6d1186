"""Arguments more than one command takes: ``--set``, ``--jobs``, a checkpoint, and integer
bounds. Standard library only (``--help`` imports no torch)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

CHECKPOINT_HELP = "a last.pt or best.pt of a run, or its run directory (best.pt, else last.pt)"


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= low``, else a one-line argument error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


def add_set(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted, e.g. optim.lr=0.05 or losses.1.weight=2; the "
        "value is YAML); repeatable",
    )


def add_jobs(parser: argparse.ArgumentParser, default: int) -> None:
    """``--jobs``: runs trained side by side (compare, demo)."""
    parser.add_argument(
        "--jobs",
        type=int_at_least(1),
        default=default,
        help=f"runs trained side by side, each in its own process with a share of the CPU "
        f"threads (default {default})",
    )


def add_checkpoint(parser: argparse.ArgumentParser) -> None:
    """The positional ``checkpoint`` of eval, predict and export."""
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
