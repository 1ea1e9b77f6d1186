"""``train``: a config run into its run directory, start to finish.

The one-way path of a run: the process group is opened (under torchrun), the run directory is
taken (:func:`~chanloss.run.run_dir.owned`), everything is built once
(:func:`~chanloss.run.build.build_run`, inside :class:`~chanloss.run.trainer.Trainer`),
a resumed run's state is restored (:meth:`Trainer.load_state`), and the loop
(:meth:`Trainer.fit`, calling :func:`~chanloss.run.epoch.train_one_epoch`) trains and writes
the run directory. It returns the run's :class:`~chanloss.run.result.RunResult`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from chanloss.config import TrainConfig
from chanloss.run.builders import resolve_device
from chanloss.run.checkpoint import load_checkpoint
from chanloss.run.distributed import is_main_process, log, process_group
from chanloss.run.result import RunResult
from chanloss.run.run_dir import RunDir, check_start, owned
from chanloss.run.trainer import Trainer

__all__ = ["train"]


def train(
    config: TrainConfig,
    out_dir: str | Path | RunDir,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    verbose: int = 2,
    evaluate_test: bool = True,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train ``config`` into ``out_dir`` and return its :class:`~chanloss.run.result.RunResult`
    (final test/validation accuracy, best epoch, checkpoint paths; also the mapping written to
    ``summary.json``). See :class:`Trainer`, also for ``evaluate_test`` and ``on_epoch_end``.

    ``resume=True`` continues from ``out_dir/last.pt`` (a larger ``epochs`` extends a finished
    run); without it, a directory that already holds a run is an error. ``stop_after`` ends
    after that many epochs in total without changing the schedule (an interruption).

    The run directory is locked for the whole run (:class:`~chanloss.run.run_dir.RunDir`;
    a second run into it is refused); a ``RunDir`` the caller already holds is used as it is.

    Under torchrun (``WORLD_SIZE`` > 1) the process group is initialised here unless it already
    is, and every process trains its share (see :mod:`chanloss.run.distributed`); every
    rank reads ``last.pt`` (into host memory, then onto its own device), only rank 0 writes
    (and holds the lock).
    """
    run = out_dir if isinstance(out_dir, RunDir) else RunDir(out_dir)
    last = run.last
    held = run.locked  # by the caller (compare, tune): released by the caller
    check_start(run, resume)
    with (
        process_group(
            config.distributed.backend,
            resolve_device(config.device),
            config.distributed.timeout_minutes,
        ),
        owned(run),
    ):
        try:
            check_start(run, resume)  # again, now that the directory is ours
            state = load_checkpoint(last, map_location="cpu") if resume else None
            trainer = Trainer(
                config,
                run,
                verbose=verbose,
                evaluate_test=evaluate_test,
                on_epoch_end=on_epoch_end,
                checkpoint_state=state,
            )
            if is_main_process():
                run.check_free_space(
                    [*trainer.model.state_dict().values(), *trainer.losses.state_dict().values()]
                )
            if state is not None:
                trainer.load_state(state, str(last))
        except BaseException:
            if not held:
                run.abandon()  # the lock file and an empty new directory go: nothing else
            raise
        if state is not None and verbose >= 2:
            log(trainer.resume_line(run.path))
        return trainer.fit(stop_after=stop_after)
