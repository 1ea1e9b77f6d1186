"""``chanloss train``: one config into one run directory (``--nproc N``: N processes)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from chanloss.cli.arguments import add_set, int_at_least
from chanloss.cli.support import stop_signals_before_training
from chanloss.core.errors import UsageError

if TYPE_CHECKING:
    from chanloss.config import TrainConfig

NAME = "train"
HELP = "train a model with the configured losses"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c", "--config", help="YAML config file (optional with --resume: OUT/config.yaml)"
    )
    add_set(p)
    p.add_argument("--out", help="run directory (default runs/<config name>-<date-time>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from last.pt (a larger epochs extends a finished run)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument(
        "--nproc",
        type=int_at_least(1),
        default=1,
        metavar="N",
        help="train in N processes on this machine (DDP; one per GPU, or CPU "
        "processes with gloo); see docs/distributed.md",
    )


def run(args: argparse.Namespace) -> int:
    from chanloss.config import load_config

    if args.resume and not args.out:
        raise UsageError("--resume needs --out DIR, the run directory to continue")
    if args.config is None:
        if not args.resume:
            raise UsageError("train needs -c CONFIG (or --resume with --out DIR)")
        config_path = Path(args.out) / "config.yaml"
    else:
        config_path = Path(args.config)
    config = load_config(config_path, args.overrides)
    out = args.out or f"runs/{config_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.nproc > 1:
        from chanloss.experiments.launcher import launch

        argv = list(getattr(args, "argv", None) or sys.argv[1:])
        return launch(args.nproc, argv if args.out else [*argv, "--out", out], out_dir=out)
    return _train_here(config, out, args)


def _train_here(config: TrainConfig, out: str, args: argparse.Namespace) -> int:
    """Train in this process (or this torchrun rank); rank 0 prints the final line."""
    from chanloss.run.builders import resolve_device
    from chanloss.run.distributed import broadcast_object, is_main_process, process_group
    from chanloss.run.session import train

    with (
        stop_signals_before_training(),
        process_group(
            config.distributed.backend,
            resolve_device(config.device),
            config.distributed.timeout_minutes,
        ),
    ):
        out = broadcast_object(out)  # under torchrun, rank 0's default run directory
        summary = train(config, out, resume=args.resume, verbose=1 if args.quiet else 2)
        main_process = is_main_process()
    if not main_process:
        return 0
    best = ""
    if summary["best_val_acc"] is not None:
        best = f", best val {100 * summary['best_val_acc']:.2f}% at epoch {summary['best_epoch']}"
    final = summary["final_test_acc"]
    if final is not None:
        print(f"final test accuracy {100 * final:.2f}%{best}; run in {out}", flush=True)
    return 0
