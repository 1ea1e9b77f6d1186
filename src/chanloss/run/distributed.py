"""Multi-process training with ``torch.distributed``: the process group, rank helpers and the
collectives (each with the group's timeout); nothing here builds or trains.

One process per device, launched by ``torchrun`` or by ``chanloss train --nproc N``
(:func:`chanloss.experiments.launcher.launch`). The process group is initialised from that
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) with
gloo on CPU and NCCL on CUDA, and a collective timeout (``distributed.timeout_minutes``);
without ``WORLD_SIZE`` (or with 1) everything runs in one process and every helper here is a
no-op.

Two machines with 4 GPUs each: run the same command on both, with ``--node_rank 0`` on the
first machine (``HOST0``, reachable from the second on port 29500) and ``--node_rank 1`` on the
second; ``RUN`` must be on a file system both machines see (rank 0 writes it, every rank reads
``last.pt`` on ``--resume``)::

    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 4 \\
        --rdzv_backend c10d --rdzv_endpoint HOST0:29500 \\
        -m chanloss train -c CONFIG --out RUN

What the trainer does with several ranks (see docs/distributed.md):

- the model and the losses (CC-Loss's attention, centres, margin heads) are wrapped together in
  one :class:`~torch.nn.parallel.DistributedDataParallel`
  (:class:`chanloss.run.build.ModelWithLosses`, wrapped by
  :func:`chanloss.run.build.wrap_for_training`), so their
  gradients are averaged and their parameters stay identical on every rank;
- a loss whose ``gathers_across_ranks`` is true (CC-Loss with ``gather=True``) computes the
  global batch's value on every rank and gives each rank its share of the gradient; DDP's
  averaging would divide that by the world size, so its term in the back-propagated objective
  is multiplied by the world size (:func:`chanloss.losses.objective.backward_scale`, applied by
  :class:`~chanloss.losses.objective.MultipleLosses`; the logged value is unscaled);
- the random generator handed to losses (MC-Loss's channel mask) is seeded identically on every
  rank and drawn from the same number of times, so the batch-shared mask agrees on all ranks;
  the global generators (augmentation) are seeded per rank
  (:func:`chanloss.run.seeding.seed_rank`);
- only rank 0 writes files and logs (:func:`is_main_process`, :func:`log`); metrics are summed
  over ranks (:func:`reduce_sum`); after each epoch the buffers (batch-norm statistics) of rank
  0 are copied to every rank (:func:`broadcast_buffers`), so evaluation and checkpoints agree.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from chanloss.core.errors import ConfigError
from chanloss.core.errors import LossInputError as LossInputError  # its old home

BACKENDS = ("auto", "gloo", "nccl")


# -- ranks -------------------------------------------------------------------------------------
def is_initialized() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """The number of processes, 1 without a process group."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """True on the process that writes files and logs (rank 0)."""
    return get_rank() == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (set by torchrun), 1 when absent."""
    return _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    """``LOCAL_RANK`` from the environment (the process's index on its machine), 0 when absent."""
    return _env_int("LOCAL_RANK", 0)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {text!r}") from None


# -- the process group -------------------------------------------------------------------------
def choose_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``nccl`` for CUDA devices, ``gloo`` otherwise; NCCL needs CUDA."""
    if backend not in BACKENDS:
        raise ConfigError(f"distributed.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"distributed.backend 'nccl' needs CUDA devices, got device {device}")
    return backend


def local_device(device: torch.device) -> torch.device:
    """The device of this process: ``cuda`` becomes ``cuda:LOCAL_RANK`` with several processes.

    A fixed ``cuda:N`` cannot be shared by several processes of one machine. User errors are
    :class:`~chanloss.config.ConfigError` (a ``ValueError``), here and below.
    """
    if device.type != "cuda" or env_world_size() <= 1:
        return device
    if device.index is not None and _env_int("LOCAL_WORLD_SIZE", 1) > 1:
        raise ConfigError(
            f"device must be 'cuda' or 'auto' with several processes per machine (each process "
            f"takes cuda:LOCAL_RANK), got {str(device)!r}"
        )
    index = local_rank() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"process LOCAL_RANK={index} needs cuda:{index}, but only "
            f"{torch.cuda.device_count()} CUDA device(s) are visible; start at most that many "
            "processes per machine"
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_process_group(
    backend: str = "auto", device: torch.device | str = "cpu", timeout_minutes: float = 10.0
) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    Does nothing (and returns False) when ``WORLD_SIZE`` is absent or 1, or when a group is
    already initialised; returns True when it initialised one. A collective that waits for
    another process longer than ``timeout_minutes`` fails (every rank then ends with an error).
    """
    if is_initialized() or env_world_size() <= 1:
        return False
    device = local_device(torch.device(device))
    name = choose_backend(backend, device)
    kwargs: dict[str, Any] = {"device_id": device} if name == "nccl" else {}
    timeout = datetime.timedelta(minutes=timeout_minutes)
    dist.init_process_group(name, init_method="env://", timeout=timeout, **kwargs)
    return True


@contextlib.contextmanager
def process_group(
    backend: str = "auto", device: torch.device | str = "cpu", timeout_minutes: float = 10.0
) -> Iterator[None]:
    """Initialise the process group for the block (see :func:`init_process_group`).

    The group is destroyed at the end only if this call created it; after a block that ends
    normally every rank first waits at a barrier, so no rank tears its connections down while
    a peer is still in its last collective.
    """
    created = init_process_group(backend, device, timeout_minutes)
    try:
        yield
        if created and is_initialized():
            dist.barrier()
    finally:
        if created and is_initialized():
            dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if get_world_size() > 1:
        dist.barrier()


# -- communication -----------------------------------------------------------------------------
def reduce_sum(value: Tensor) -> Tensor:
    """Sum a metric tensor over processes (identity without a process group)."""
    if get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself in one process)."""
    if get_world_size() <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in one process)."""
    if get_world_size() <= 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def broadcast_buffers(*modules: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers of ``modules`` (batch-norm statistics...) to every rank."""
    if get_world_size() <= 1:
        return
    for module in modules:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)


def log(message: str) -> None:
    """Print a line on the main process only."""
    if is_main_process():
        print(message, flush=True)


__all__ = [
    "BACKENDS",
    "all_gather_object",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "choose_backend",
    "env_world_size",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_initialized",
    "is_main_process",
    "local_device",
    "local_rank",
    "log",
    "process_group",
    "reduce_sum",
]
