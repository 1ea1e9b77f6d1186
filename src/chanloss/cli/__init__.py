"""The ``chanloss`` command line: ``train``, ``eval``, ``compare``, ``demo``, ``predict``,
``export``, ``config``, ``analyze``, ``tune`` and ``prune``.

This module is the parser and the error -> exit status handling; each command is one module
(:mod:`chanloss.cli.train`, ...) with ``NAME``, ``HELP``, ``configure(parser)`` and ``run(args)``
("parse, then one call one floor down"). Other modules can add their own commands with
:func:`register_command` (a name, a help line, a function that adds the arguments and one that
runs the command). User errors (bad config key or value, missing file, bad checkpoint, bad
arguments) print one line ``chanloss: error: ...`` on stderr and exit with status 2.

Only the standard library is imported at the top: each command imports what it needs when it
runs, so that ``chanloss --help`` and ``chanloss COMMAND --help`` do not wait for torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from chanloss.cli import analyze, compare, demo, export, predict, prune, train, tune
from chanloss.cli import config as config_command
from chanloss.cli import eval as eval_command
from chanloss.cli.support import (
    OUT_OF_MEMORY,
    PROG,
    config_error,
    distributed_failure,
    masked_traceback,
    out_of_memory,
    rerun_command,
)
from chanloss.core.errors import UsageError
from chanloss.core.masking import mask_secrets

__all__ = [
    "COMMANDS",
    "Command",
    "UsageError",
    "build_parser",
    "entry",
    "main",
    "register_command",
]

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


# The built-in commands, in the order ``chanloss --help`` lists them.
for _module in (
    train,
    eval_command,
    compare,
    demo,
    predict,
    export,
    config_command,
    analyze,
    tune,
    prune,
):
    register_command(_module.NAME, _module.HELP, _module.configure)(_module.run)


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


def _error_line(message: str) -> None:
    print(f"{PROG}: error: {mask_secrets(message)}", file=sys.stderr, flush=True)


def _run_command(argv: Sequence[str] | None) -> int:
    """Parse ``argv`` and run its command; a user's error becomes one line and status 2."""
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
        _error_line(" ".join(str(err).split()))
        return USER_ERROR
    except OSError as err:  # an unwritable or full disk, a file that vanished: one line
        where = f"{err.filename}: " if err.filename else ""
        _error_line(f"{where}{err.strerror or err}")
        return USER_ERROR
    except KeyboardInterrupt as err:
        return _interrupted(err, args)
    except MemoryError:
        _error_line(OUT_OF_MEMORY)
        return USER_ERROR
    except RuntimeError as err:
        if out_of_memory(err):
            _error_line(f"{OUT_OF_MEMORY} ({' '.join(str(err).split())[:200]})")
            return USER_ERROR
        reason = distributed_failure(err)
        if reason is None:
            raise
        _error_line(reason)
        return 1
    return int(status or 0)


def _interrupted(err: KeyboardInterrupt, args: argparse.Namespace | None) -> int:
    """Ctrl-C or a stop signal: one line (with the command that resumes, when something was
    saved) and ``128 + signal``."""
    out_dir = getattr(err, "out_dir", None)  # TrainingInterrupted: last.pt was written
    status = 128 + int(getattr(err, "signum", 2))  # 130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1
    if out_dir is None or args is None:
        print(f"{PROG}: {err or 'interrupted'}", file=sys.stderr, flush=True)
    elif args.command == "train":
        again = ["train", "--out", str(out_dir), "--resume"]
        nproc = os.environ.get(NPROC_ENV)  # started by --nproc N: resume with it
        if nproc:
            again += ["--nproc", nproc]
        print(f"{PROG}: {err}; resume with: {rerun_command(again)}", file=sys.stderr, flush=True)
    else:  # compare, demo and prune resume their unfinished runs themselves
        print(
            f"{PROG}: {err}; resume by running the same command again: {rerun_command(args.argv)}",
            file=sys.stderr,
            flush=True,
        )
    return status


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
