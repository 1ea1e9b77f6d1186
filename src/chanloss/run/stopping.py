"""How a training run stops early: stop signals (Ctrl-C, SIGTERM, SIGUSR1) and non-finite losses.

:class:`StopRequest` turns the first stop signal into a request that the training loop honours
after the current step (the trainer then saves ``last.pt`` and raises
:class:`TrainingInterrupted`); :func:`nonfinite_error` words the error of a diverged step.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from chanloss.core.errors import ConfigError as ConfigError
from chanloss.core.errors import LossInputError, NonFiniteLossError
from chanloss.core.errors import TrainingInterrupted as TrainingInterrupted
from chanloss.run.distributed import is_main_process, reduce_sum

# Signals that ask a run to stop after the current step (schedulers send SIGTERM before
# SIGKILL; SLURM's --signal=USR1@SECONDS sends SIGUSR1 ahead of the time limit).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


class StopRequest:
    """Whether a stop signal asked the run to stop after the current step, and which."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int = signal.SIGINT

    def by(self) -> str:
        """`` by SIGTERM`` for a message (nothing for Ctrl-C)."""
        if self.signum == signal.SIGINT:
            return ""
        return f" by {signal.Signals(self.signum).name}"

    def agreed(self, world_size: int, device: torch.device) -> bool:
        """Whether any rank was asked to stop (a collective: every rank calls it at the same
        point); with one process, :attr:`requested`."""
        if world_size > 1:
            flag = reduce_sum(torch.tensor(float(self.requested), device=device))
            self.requested = bool(flag.item() > 0)
        return self.requested

    @contextlib.contextmanager
    def handle(self) -> Iterator[None]:
        """While training, the first Ctrl-C, SIGTERM or SIGUSR1 sets :attr:`requested`: the
        step is finished, ``last.pt`` written and :class:`TrainingInterrupted` raised. A second
        Ctrl-C stops at once; a repeated SIGTERM/SIGUSR1 changes nothing (a scheduler's SIGKILL
        ends the run for good). With several processes the ranks agree on the step at the next
        log point (every 10 steps). Only in the main thread (signals go there)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            if self.requested:
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                return
            self.requested = True
            self.signum = signum
            if is_main_process():
                again = " (Ctrl-C again stops at once)" if signum == signal.SIGINT else ""
                name = "" if signum == signal.SIGINT else f"{signal.Signals(signum).name}: "
                print(
                    f"chanloss: {name}finishing the current step, then saving last.pt{again}",
                    file=sys.stderr,
                    flush=True,
                )

        previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def nonfinite_error(
    columns: list[str],
    values: list[float],
    epoch: int,
    step: int,
    steps_per_epoch: int,
    last: Path,
) -> NonFiniteLossError:
    """The error for a step whose loss terms (``values``, named by ``columns``; the last value
    is the objective) were not all finite, naming the terms, the epoch and the step."""
    bad = [f"{c!r} ({v})" for c, v in zip(columns, values, strict=False) if not math.isfinite(v)]
    if bad:
        what = f"the loss term{'s' if len(bad) > 1 else ''} {', '.join(bad)}"
    elif not math.isfinite(values[-1]):
        what = f"the weighted sum of the terms ({values[-1]})"
    else:
        what = "a loss on another process"
    kept = (
        f"the last good checkpoint {last} is kept"
        if last.exists()
        else "no checkpoint had been written yet"
    )
    return NonFiniteLossError(
        f"training diverged in epoch {epoch + 1} (loss {values[-1]}); lower optim.lr, add "
        f"warm-up or set grad_clip: {what} was non-finite at epoch {epoch + 1}, step "
        f"{step + 1}/{steps_per_epoch} (global step "
        f"{epoch * steps_per_epoch + step + 1}); {kept}; on_nonfinite: skip would "
        "skip such steps instead"
    )


def refused_input_error(
    name: str,
    err: LossInputError,
    epoch: int,
    step: int,
    steps_per_epoch: int,
    global_step: int,
    last: Path,
) -> NonFiniteLossError:
    """The error for loss ``name`` refusing its input (``check_finite``) at a step."""
    kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint"
    return NonFiniteLossError(
        f"loss {name!r} (losses.{err.index}) refused its input at epoch {epoch + 1}, step "
        f"{step + 1}/{steps_per_epoch} (global step {global_step + 1}): {err}; the model "
        f"diverged: lower optim.lr, add warm-up or set grad_clip; {kept}"
    )


class NonFiniteCheck:
    """Whether each step's loss terms and objective are finite (``on_nonfinite``).

    On CPU (and with ``skip``) every step is checked as it happens; on accelerators with
    ``stop`` the first bad step is kept on the device and checked at the next log point
    (:meth:`raise_first_bad`), without a host sync per step. With several processes the
    decision is taken on the sum over ranks, so that every rank skips or stops at the same step.
    """

    def __init__(
        self,
        device: torch.device,
        columns: list[str],
        on_nonfinite: str,
        steps_per_epoch: int,
        last: Path,
    ) -> None:
        self.every_step = device.type == "cpu" or on_nonfinite == "skip"
        self.skip = on_nonfinite == "skip"
        self.columns = columns
        self.steps_per_epoch = steps_per_epoch
        self.last = last
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_values = torch.zeros(len(columns) + 1, device=device)

    def reset(self) -> None:
        """Forget a recorded bad step (at the start of an epoch)."""
        self.first_bad.fill_(-1)

    def step_is_finite(self, stacked: Tensor, epoch: int, step: int, every_step: bool) -> bool:
        """False when the step must be skipped; raises for ``on_nonfinite: stop``.

        ``stacked`` holds the step's terms and objective; ``every_step`` checks them now
        (else the first bad one is recorded on the device).
        """
        if every_step:
            both = reduce_sum(stacked)
            if bool(torch.isfinite(both).all()):
                return True
            if self.skip:
                return False
            raise self.error(stacked.tolist(), epoch, step)
        first = ~torch.isfinite(stacked).all() & (self.first_bad < 0)
        self.first_bad.copy_(torch.where(first, self.first_bad.new_full((), step), self.first_bad))
        self.bad_values.copy_(torch.where(first, stacked, self.bad_values))
        return True

    def raise_first_bad(self, epoch: int) -> None:
        """Raise for a non-finite step recorded on the device (one host sync)."""
        if float(reduce_sum((self.first_bad >= 0).float())) > 0:
            raise self.error(self.bad_values.tolist(), epoch, max(int(self.first_bad), 0))

    def error(self, values: list[float], epoch: int, step: int) -> NonFiniteLossError:
        """The error naming the non-finite terms, the epoch and the step."""
        return nonfinite_error(self.columns, values, epoch, step, self.steps_per_epoch, self.last)
