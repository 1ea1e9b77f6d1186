"""What the command line does around its commands: SIGTERM/SIGUSR1 before training starts,
the one-line wording of failures that are not config errors (out of memory, a failed
collective), and the shell command that reruns this process (for the resume hint)."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from chanloss.core.masking import mask_secrets

__all__ = [
    "OUT_OF_MEMORY",
    "PROG",
    "Stopped",
    "config_error",
    "distributed_failure",
    "masked_traceback",
    "out_of_memory",
    "rerun_command",
    "stop_signals_before_training",
]

PROG = "chanloss"


class Stopped(KeyboardInterrupt):
    """SIGTERM/SIGUSR1 outside the training loop (nothing to save): ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(
            f"interrupted by {signal.Signals(signum).name} while the run was starting or "
            "finishing (no training step was cut short; the files on disk are complete)"
        )
        self.signum = signum


@contextlib.contextmanager
def stop_signals_before_training() -> Iterator[None]:
    """SIGTERM and SIGUSR1 while a run starts (data, model, checkpoint loading), or between the
    runs of ``compare`` and ``demo``, end it with one line instead of silently; once training
    runs, the trainer's own handlers take over (and ``compare --jobs`` passes the stop on to its
    workers, which save ``last.pt``)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Stopped(signum)

    names = ("SIGTERM", "SIGUSR1")
    previous = {sig: signal.signal(sig, stop) for n in names if (sig := getattr(signal, n, None))}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


OUT_OF_MEMORY = (
    "out of memory; expected a smaller batch_size, eval_batch_size, image size "
    "(data.augment.resize) or model; the last checkpoint (if any) is kept"
)


def out_of_memory(err: RuntimeError) -> bool:
    """A CPU or CUDA allocation that failed (torch raises these as RuntimeError)."""
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    text = str(err)
    return (oom is not None and isinstance(err, oom)) or any(
        k in text for k in ("can't allocate memory", "CUDA out of memory", "out of memory")
    )


def config_error() -> type[Exception]:
    from chanloss.config import ConfigError

    return ConfigError


def distributed_failure(err: RuntimeError) -> str | None:
    """One line for a failed collective (a peer process stopped, died or timed out), else
    None. Multi-process runs only."""
    if os.environ.get("WORLD_SIZE", "1").strip() in ("", "0", "1"):
        return None
    dist = sys.modules.get("torch.distributed")
    text = " ".join(str(err).split())
    # gloo words a stopped peer differently from release to release and from one collective
    # to another ("Connection closed by peer", "Timed out waiting ...", "Application timeout
    # caused pair closure"), so the markers are matched without regard to case.
    known = ("gloo", "nccl", "connection closed by peer", "timed out", "timeout", "socket")
    lowered = text.lower()
    dist_error = getattr(dist, "DistError", None) if dist is not None else None
    if not (
        (dist_error is not None and isinstance(err, dist_error)) or any(k in lowered for k in known)
    ):
        return None
    rank = os.environ.get("RANK", "?")
    detail = text[:300] + ("..." if len(text) > 300 else "")
    return (
        f"process {rank}: a collective operation with the other processes failed ({detail}); "
        "another process stopped, died or did not answer within distributed.timeout_minutes"
    )


def rerun_command(arguments: Sequence[str]) -> str:
    """A shell command running ``arguments`` the way this process was started: the ``chanloss``
    script, or ``python -m chanloss`` with this interpreter. A password in an argument (a
    ``--storage`` URL) is shown as ``***``, with a word on how to give it."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == PROG:
        program = [str(script)]
    else:
        program = [sys.executable, "-m", PROG]
    command = shlex.join([*program, *arguments])
    shown = mask_secrets(command)
    if shown != command:
        shown += " (password masked: type it there, or leave it out of the URL and set PGPASSWORD)"
    return shown


def masked_traceback(err: BaseException) -> str | None:
    """The traceback of ``err`` with its passwords masked, or ``None`` when it quotes none
    (then Python prints it as usual)."""
    import traceback

    text = "".join(traceback.format_exception(err))
    masked = mask_secrets(text)
    return None if masked == text else masked
