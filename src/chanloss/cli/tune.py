"""``chanloss tune``: search loss/optimiser settings on validation (Optuna), then confirm."""

from __future__ import annotations

import argparse
import sys

from chanloss.cli.arguments import add_set, int_at_least
from chanloss.cli.support import PROG, rerun_command

NAME = "tune"
HELP = "search loss/optimiser settings on validation (Optuna), then check"


def _duration(text: str) -> float:
    from chanloss.tuning import parse_duration

    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="YAML config (needs data.val_fraction)")
    add_set(p)
    p.add_argument("--out", required=True, help="directory of the study (study.db, report.html)")
    p.add_argument(
        "--trials",
        type=int_at_least(1),
        default=None,
        metavar="N",
        help="trials (default 20; with --timeout alone: until the time is spent)",
    )
    p.add_argument(
        "--timeout",
        type=_duration,
        default=None,
        metavar="T",
        help="wall-clock budget, e.g. 2h or 90m: no trial starts once the time left is what "
        "the runs after the search need",
    )
    p.add_argument(
        "--jobs",
        type=int_at_least(1),
        default=1,
        metavar="J",
        help="trials at once, in separate processes (cores // J torch threads each); on a CPU "
        "with small models, the number of cores buys the most trials an hour",
    )
    _configure_confirmation(p)
    p.add_argument(
        "--resume", action="store_true", help="continue the study in --out (finished trials kept)"
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="a shared Optuna storage: sqlite:///PATH, postgresql://USER@HOST/DB, or "
        "journal:PATH (default: OUT/study.db); a PostgreSQL password is read from PGPASSWORD or "
        "~/.pgpass when the URL has none, and is never printed or stored",
    )
    p.add_argument(
        "--pruner",
        choices=("noise", "median", "halving", "none"),
        default="noise",
        help="stops poor trials early from the per-epoch validation accuracy (default noise: "
        "after half of the epochs, only below the others by more than the measured noise)",
    )


def _configure_confirmation(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--folds",
        type=int_at_least(2),
        default=None,
        metavar="K",
        help="confirm the winner against CE alone by paired, stratified K-fold cross-validation "
        "of the training split (default 5; fewer than 3 give no verdict)",
    )
    p.add_argument(
        "--confirm-seeds",
        type=int_at_least(0),
        default=None,
        metavar="S",
        help="instead of --folds: confirm on S fresh seeds on the validation split (0: no "
        "confirmation)",
    )
    p.add_argument(
        "--top",
        type=int_at_least(0),
        default=3,
        metavar="N",
        help="the N best settings are re-run on a fresh seed to choose the winner (default 3)",
    )


def run(args: argparse.Namespace) -> int:
    from chanloss.config import ConfigError, load_config
    from chanloss.run.builders import preflight
    from chanloss.tuning import TuneInterrupted, tune

    if args.folds is not None and args.confirm_seeds is not None:
        raise ConfigError("--folds and --confirm-seeds are two confirmations; choose one")
    config = load_config(args.config, args.overrides)
    preflight(config)
    try:
        tune(
            config,
            args.out,
            trials=args.trials,
            timeout_s=args.timeout,
            jobs=args.jobs,
            folds=args.folds
            if args.folds is not None
            else (5 if args.confirm_seeds is None else 0),
            confirm_seeds=args.confirm_seeds or 0,
            top=args.top,
            resume=args.resume,
            storage=args.storage,
            pruner=args.pruner,
            config_path=args.config,
        )
    except TuneInterrupted as err:
        again = list(args.argv) + ([] if args.resume else ["--resume"])
        print(f"{PROG}: {err}; continue with: {rerun_command(again)}", file=sys.stderr, flush=True)
        return 130
    return 0
