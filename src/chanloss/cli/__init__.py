"""The ``chanloss`` command line: ``train``, ``eval``, ``compare``, ``demo``, ``analyze``,
``predict``, ``export``, ``config``, ``tune`` and ``prune``.

Subcommands are registered with :func:`register_command` (a name, a help line, a function
that adds the arguments and one that runs the command), so other modules can add their own.
User errors (bad config key or value, missing file, bad checkpoint, bad arguments) print one
line ``chanloss: error: ...`` on stderr and exit with status 2.

Only the standard library is imported at the top: each command imports what it needs when it
runs, so that ``chanloss --help`` and ``chanloss COMMAND --help`` do not wait for torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from chanloss.cli.support import (
    OUT_OF_MEMORY,
    PROG,
    config_error,
    distributed_failure,
    masked_traceback,
    out_of_memory,
    rerun_command,
    stop_signals_before_training,
)
from chanloss.core.errors import UsageError
from chanloss.core.masking import mask_secrets

USER_ERROR = 2
NPROC_ENV = "CHANLOSS_NPROC"  # set by the --nproc launcher in its workers


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


@dataclass
class Command:
    """A subcommand: ``configure(parser)`` adds its arguments, ``run(args)`` executes it."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


COMMANDS: dict[str, Command] = {}


def register_command(
    name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]
) -> Callable[
    [Callable[[argparse.Namespace], int | None]], Callable[[argparse.Namespace], int | None]
]:
    """Decorator registering ``run(args)`` as the subcommand ``name``."""

    def decorate(
        run: Callable[[argparse.Namespace], int | None],
    ) -> Callable[[argparse.Namespace], int | None]:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} is already registered")
        COMMANDS[name] = Command(name, help, configure, run)
        return run

    return decorate


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted, e.g. optim.lr=0.05 or losses.1.weight=2; the "
        "value is YAML); repeatable",
    )


# -- train -------------------------------------------------------------------------------------
def _configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c", "--config", help="YAML config file (optional with --resume: OUT/config.yaml)"
    )
    _add_set(p)
    p.add_argument("--out", help="run directory (default runs/<config name>-<date-time>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from last.pt (a larger epochs extends a finished run)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument(
        "--nproc",
        type=_int_at_least(1),
        default=1,
        metavar="N",
        help="train in N processes on this machine (DDP; one per GPU, or CPU "
        "processes with gloo); see docs/distributed.md",
    )


@register_command("train", "train a model with the configured losses", _configure_train)
def _run_train(args: argparse.Namespace) -> int:
    from chanloss.config import load_config
    from chanloss.run.session import train

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
    from chanloss.run.builders import resolve_device
    from chanloss.run.distributed import (
        broadcast_object,
        is_main_process,
        process_group,
    )

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


# -- eval --------------------------------------------------------------------------------------
def _configure_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        help="a last.pt or best.pt of a run, or its run directory (best.pt, else last.pt)",
    )
    p.add_argument(
        "--out",
        help="output directory; the files go to OUT/<split>/ (default OUT: <run dir>/eval-<checkpoint name>)",
    )
    p.add_argument("--split", default="test", choices=("test", "val"), help="the split to evaluate")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


@register_command("eval", "top-1/top-5, per-class accuracy and confusion matrix", _configure_eval)
def _run_eval(args: argparse.Namespace) -> int:
    from chanloss.analysis.evaluate import evaluate_checkpoint

    evaluate_checkpoint(args.checkpoint, args.out, split=args.split, device=args.device)
    return 0


# -- compare / demo ----------------------------------------------------------------------------
def _configure_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c", "--config", dest="configs", action="append", required=True, help="config file; repeat"
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per config (default 3)")
    _add_set(p)
    p.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    _add_jobs(p, 1)


def _add_jobs(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument(
        "--jobs",
        type=_int_at_least(1),
        default=default,
        help=f"runs trained side by side, each in its own process with a share of the CPU "
        f"threads (default {default})",
    )


@register_command("compare", "train several configs over seeds and tabulate", _configure_compare)
def _run_compare(args: argparse.Namespace) -> int:
    from chanloss.experiments.comparison import compare, load_labelled, results_table
    from chanloss.experiments.verdict import compare_verdict
    from chanloss.run.preflight import preflight

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


def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per loss (default 3)")
    _add_set(p)
    _add_jobs(p, 2)


@register_command(
    "demo", "CE vs CE + MC-Loss on a fine-grained set, 3 seeds, 2 runs at a time", _configure_demo
)
def _run_demo(args: argparse.Namespace) -> int:
    from chanloss.experiments.demo import run_demo

    with stop_signals_before_training():
        run_demo(args.out, seeds=args.seeds, overrides=args.overrides, jobs=args.jobs)
    return 0


# -- predict / export --------------------------------------------------------------------------
def _configure_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        help="a last.pt or best.pt of a run, or its run directory (best.pt, else last.pt)",
    )
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files, or folders searched recursively"
    )
    p.add_argument(
        "--topk", type=_int_at_least(1), default=1, metavar="K", help="classes per image (1)"
    )
    p.add_argument("--out", metavar="FILE.csv", help="write the predictions to this CSV file")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")


@register_command("predict", "classify image files with a trained checkpoint", _configure_predict)
def _run_predict(args: argparse.Namespace) -> int:
    from chanloss.inference import load_model, predict, write_predictions

    model = load_model(args.checkpoint, device=args.device)
    predictions = predict(model, args.paths, topk=args.topk)
    if args.out:
        write_predictions(predictions, args.out)
        print(f"{len(predictions)} predictions in {args.out}", flush=True)
        return 0
    width = max(len(p.path) for p in predictions)
    for p in predictions:
        ranked = "  ".join(
            f"{name} {100 * prob:.1f}%"
            for name, prob in zip(p.classes, p.probabilities, strict=True)
        )
        print(f"{p.path:<{width}}  {ranked}", flush=True)
    return 0


def _configure_export(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint",
        help="a last.pt or best.pt of a run, or its run directory (best.pt, else last.pt)",
    )
    p.add_argument(
        "--format",
        default=None,
        choices=("torchscript", "onnx"),
        help="torchscript or onnx (needs the onnx package: pip install onnx); default: from "
        "the suffix of --out (.onnx: onnx), else torchscript",
    )
    p.add_argument(
        "--out", help="output file (default: the checkpoint's path with .torchscript.pt or .onnx)"
    )


@register_command(
    "export", "export a checkpoint as TorchScript or ONNX (images -> scores)", _configure_export
)
def _run_export(args: argparse.Namespace) -> int:
    from chanloss.inference import export_format, export_model

    format = export_format(args.out, args.format)
    path = export_model(args.checkpoint, args.out, format=format)
    print(f"exported {args.checkpoint} ({format}) to {path}", flush=True)
    return 0


# -- config ------------------------------------------------------------------------------------
def _configure_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    _add_set(p)


@register_command(
    "config",
    "print the resolved, validated config (every default filled in; a dry run)",
    _configure_config,
)
def _run_config(args: argparse.Namespace) -> int:
    from chanloss.config import dump_config, load_config
    from chanloss.run.preflight import preflight

    config = load_config(args.config, args.overrides)
    preflight(config)  # the checks that need no data, as train makes them before loading it
    print(dump_config(config), end="", flush=True)
    return 0


# -- analyze -----------------------------------------------------------------------------------
def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


def _configure_analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CHECKPOINT",
        help="last.pt/best.pt of runs, or run directories (their best.pt)",
    )
    p.add_argument("--out", required=True, help="directory for report.html, metrics.csv, PNGs")
    p.add_argument(
        "--max-samples",
        type=_int_at_least(3),
        default=1000,
        help="test samples for the separability metrics and t-SNE (default 1000)",
    )
    p.add_argument("--images", type=_int_at_least(1), default=4, help="MC-view examples (4)")
    p.add_argument(
        "--label",
        dest="labels",
        action="append",
        metavar="NAME",
        help="name of a run in the report, one per checkpoint in order (default: the config "
        "name, from the run directory); repeat",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


@register_command(
    "analyze",
    "separability metrics, CC/MC channel views and t-SNE of checkpoints",
    _configure_analyze,
)
def _run_analyze(args: argparse.Namespace) -> int:
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


# -- tune --------------------------------------------------------------------------------------
def _duration(text: str) -> float:
    from chanloss.tuning import parse_duration

    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _configure_tune(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="YAML config (needs data.val_fraction)")
    _add_set(p)
    p.add_argument("--out", required=True, help="directory of the study (study.db, report.html)")
    p.add_argument(
        "--trials",
        type=_int_at_least(1),
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
        type=_int_at_least(1),
        default=1,
        metavar="J",
        help="trials at once, in separate processes (cores // J torch threads each); on a CPU "
        "with small models, the number of cores buys the most trials an hour",
    )
    p.add_argument(
        "--folds",
        type=_int_at_least(2),
        default=None,
        metavar="K",
        help="confirm the winner against CE alone by paired, stratified K-fold cross-validation "
        "of the training split (default 5; fewer than 3 give no verdict)",
    )
    p.add_argument(
        "--confirm-seeds",
        type=_int_at_least(0),
        default=None,
        metavar="S",
        help="instead of --folds: confirm on S fresh seeds on the validation split (0: no "
        "confirmation)",
    )
    p.add_argument(
        "--top",
        type=_int_at_least(0),
        default=3,
        metavar="N",
        help="the N best settings are re-run on a fresh seed to choose the winner (default 3)",
    )
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


@register_command(
    "tune", "search loss/optimiser settings on validation (Optuna), then check", _configure_tune
)
def _run_tune(args: argparse.Namespace) -> int:
    from chanloss.config import ConfigError, load_config
    from chanloss.run.preflight import preflight
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


# -- entry point -------------------------------------------------------------------------------
# -- prune -------------------------------------------------------------------------------------
def _configure_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a last.pt or best.pt of a run")
    p.add_argument(
        "--out", required=True, help="output directory (new or empty; locked while pruning)"
    )
    p.add_argument(
        "--method",
        default="cpli",
        help="cpli (default), l1, bn_scale, taylor or random; see docs/pruning.md",
    )
    p.add_argument(
        "--speedup", type=float, default=2.0, help="MACs before / after (> 1; default 2)"
    )
    p.add_argument(
        "--finetune-epochs",
        type=_int_at_least(0),
        default=0,
        metavar="E",
        help="fine-tune the pruned model for E epochs with the run's losses and recipe at "
        "prune.finetune_lr (default: a tenth of the run's lr); pruned.pt is the best on "
        "validation of right after pruning and each epoch",
    )
    p.add_argument(
        "--prune-features",
        action="store_true",
        help="also prune the feature layer that CC-Loss/MC-Loss read (evenly in MC's groups)",
    )
    p.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-fit the layers reading each pruned group by least squares (default: on for "
        "cpli, off for the other methods)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines or table")
    _add_set(p)


@register_command(
    "prune", "remove channels of a trained model (CPLI, L1, BN, Taylor)", _configure_prune
)
def _run_prune(args: argparse.Namespace) -> int:
    from chanloss.pruning import prune_checkpoint

    prune_checkpoint(
        args.checkpoint,
        args.out,
        method=args.method,
        speedup=args.speedup,
        finetune_epochs=args.finetune_epochs,
        overrides=args.overrides,
        prune_features=args.prune_features,
        refit=args.refit,
        device=args.device,
        verbose=not args.quiet,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser with every registered subcommand."""
    from chanloss import __version__

    parser = _Parser(prog=PROG, description="Channel-level losses for image classifiers.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for cmd in COMMANDS.values():
        cmd.configure(sub.add_parser(cmd.name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status. No password is printed: an error
    message, and a traceback that would quote one, show it as ``***``
    (:func:`chanloss.core.masking.mask_secrets`)."""
    try:
        return _run_command(argv)
    except Exception as err:
        if (text := masked_traceback(err)) is None:
            raise
        print(text, end="", file=sys.stderr, flush=True)
        return 1


def _run_command(argv: Sequence[str] | None) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if args.command is None:
            raise UsageError(
                f"a command is required: one of {', '.join(COMMANDS)} (see '{PROG} --help')"
            )
        from chanloss.core.messages import command_scope

        with command_scope():
            status = COMMANDS[args.command].run(args)
    except SystemExit:  # --help and --version, before pydantic is imported for the next line
        raise
    except (UsageError, config_error(), FileNotFoundError) as err:
        message = " ".join(str(err).split())
        print(f"{PROG}: error: {mask_secrets(message)}", file=sys.stderr, flush=True)
        return USER_ERROR
    except OSError as err:  # an unwritable or full disk, a file that vanished: one line
        where = f"{err.filename}: " if err.filename else ""
        message = mask_secrets(f"{where}{err.strerror or err}")
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
        return USER_ERROR
    except KeyboardInterrupt as err:
        out_dir = getattr(err, "out_dir", None)  # TrainingInterrupted: last.pt was written
        status = 128 + int(getattr(err, "signum", 2))  # 130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1
        if out_dir is None or args is None:
            print(f"{PROG}: {err or 'interrupted'}", file=sys.stderr, flush=True)
        elif args.command == "train":
            again = ["train", "--out", str(out_dir), "--resume"]
            nproc = os.environ.get(NPROC_ENV)  # started by --nproc N: resume with it
            if nproc:
                again += ["--nproc", nproc]
            print(
                f"{PROG}: {err}; resume with: {rerun_command(again)}", file=sys.stderr, flush=True
            )
        else:  # compare and demo resume their unfinished runs themselves
            print(
                f"{PROG}: {err}; resume by running the same command again: {rerun_command(args.argv)}",
                file=sys.stderr,
                flush=True,
            )
        return status
    except MemoryError:
        print(f"{PROG}: error: {OUT_OF_MEMORY}", file=sys.stderr, flush=True)
        return USER_ERROR
    except RuntimeError as err:
        if out_of_memory(err):
            first = mask_secrets(" ".join(str(err).split())[:200])
            print(f"{PROG}: error: {OUT_OF_MEMORY} ({first})", file=sys.stderr, flush=True)
            return USER_ERROR
        reason = distributed_failure(err)
        if reason is None:
            raise
        print(f"{PROG}: error: {mask_secrets(reason)}", file=sys.stderr, flush=True)
        return 1
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def entry() -> NoReturn:
    """The ``chanloss`` console script and ``python -m chanloss``: exit with :func:`main`'s status.

    Under torchrun the process ends with ``os._exit`` once its output is flushed: DDP keeps the
    gloo process group alive past ``destroy_process_group`` (torch 2.13), and the gloo threads
    that then meet the C++ exit handlers abort the process now and then ("terminate called
    without an active exception"), which torchrun reports as a failed run after it finished.
    """
    status = main()
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
