"""Helpers for a run's checkpointed state (what :class:`~chanloss.run.trainer.Trainer`'s
``state()``/``load_state()`` and ``metrics.csv`` use): the process count a checkpoint needs,
this rank's generator states in it, and metrics rows rounded for the file."""

from __future__ import annotations

from typing import Any

from chanloss.core.errors import CheckpointError
from chanloss.run.distributed import get_rank, get_world_size

__all__ = ["check_world_size", "rank_rng_state", "rounded"]


def rounded(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics row with floats at 6 significant digits (float32 noise is not information)."""
    return {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in row.items()}


def check_world_size(saved: int, source: str) -> None:
    """A run resumes with the number of processes it was started with (``CheckpointError``).

    ``batch_size`` is per process, so another count changes the steps per epoch and with them
    the learning-rate schedule.
    """
    world = get_world_size()
    if saved != world:
        launch = "without --nproc" if saved == 1 else f"with --nproc {saved} (or torchrun)"
        raise CheckpointError(
            f"{source} was written by a run of {saved} process(es) and this run has {world}; "
            f"resume it {launch}"
        )


def rank_rng_state(state: dict[str, Any]) -> Any:
    """This rank's generator states in a checkpoint (rank 0's when only those were saved)."""
    per_rank = state.get("rng_ranks")
    if isinstance(per_rank, list) and len(per_rank) == get_world_size():
        return per_rank[get_rank()]
    return state["rng"]
