"""Multi-process training with ``torch.distributed``: process group, DDP wrapping, rank helpers.

One process per device, launched by ``torchrun`` or by ``chanloss train --nproc N`` (:func:`launch`,
which starts N ``python -m chanloss train ...`` processes on this machine with torchrun's
environment variables, forwards SIGINT/SIGTERM/SIGUSR1/SIGHUP to them and reports a failed
process in one line with the path of its log). The process group is initialised from that
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
  one :class:`~torch.nn.parallel.DistributedDataParallel` (:class:`ModelWithLosses`), so their
  gradients are averaged and their parameters stay identical on every rank;
- a loss whose ``gathers_across_ranks`` is true (CC-Loss with ``gather=True``) computes the
  global batch's value on every rank and gives each rank its share of the gradient; DDP's
  averaging would divide that by the world size, so its term in the back-propagated objective
  is multiplied by :func:`objective_scale` (the logged value is unscaled);
- the random generator handed to losses (MC-Loss's channel mask) is seeded identically on every
  rank and drawn from the same number of times, so the batch-shared mask agrees on all ranks;
  the global generators (augmentation) are seeded per rank (:func:`seed_rank`);
- only rank 0 writes files and logs (:func:`is_main_process`, :func:`log`); metrics are summed
  over ranks (:func:`reduce_sum`); after each epoch the buffers (batch-norm statistics) of rank
  0 are copied to every rank (:func:`broadcast_buffers`), so evaluation and checkpoints agree.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from chanloss.errors import LossInputError
from chanloss.training.checkpoint import CheckpointError
from chanloss.training.config import ConfigError

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
    :class:`~chanloss.training.config.ConfigError` (a ``ValueError``), here and below.
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


# -- launching ---------------------------------------------------------------------------------
NPROC_ENV = "CHANLOSS_NPROC"  # in the workers of --nproc: N (for the resume hint)
FORWARDED = tuple(
    getattr(signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGHUP")
    if hasattr(signal, name)
)
INTERRUPTED = {130, 138, 143}  # a worker stopped by a forwarded signal after saving
GRACE_S = 10.0  # after a worker fails, how long the others get to end by themselves


def worker_command(argv: Sequence[str]) -> list[str]:
    """The command line of one ``--nproc`` worker: ``python -m chanloss ARGV`` with ``--nproc``
    (or any abbreviation of it that argparse accepts, with its value) removed."""
    kept: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        name, eq, _ = word.partition("=")
        if len(name) >= 3 and "--nproc".startswith(name):
            skip = not eq
            continue
        kept.append(word)
    return [sys.executable, "-m", "chanloss", *kept]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the worker gets SIGTERM (and saves) if the launcher is killed."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(nproc: int, argv: Sequence[str], *, out_dir: str | Path) -> int:
    """Run ``chanloss ARGV`` in ``nproc`` processes on this machine; the exit status.

    Each worker gets torchrun's variables (``RANK``, ``WORLD_SIZE``, ``MASTER_PORT``...) and,
    without ``OMP_NUM_THREADS`` in the environment, ``cpus // nproc`` threads. Rank 0 writes
    to this terminal; rank ``r`` > 0 to ``OUT/logs/rank<r>.log`` (removed when empty).
    SIGINT, SIGTERM, SIGUSR1 and SIGHUP are passed on to every worker (each finishes its step
    and rank 0 saves ``last.pt``). When a worker fails the others get :data:`GRACE_S` seconds
    to end, then are stopped; the failure is reported in one line naming the log.
    """
    if env_world_size() > 1:
        raise ConfigError(
            "--nproc starts the processes itself; this process already runs under torchrun "
            f"(WORLD_SIZE={env_world_size()}), so leave --nproc out"
        )
    from chanloss.training.run_dir import RunDir

    out_dir = Path(out_dir)
    if out_dir.exists():  # a run directory in use: one line now, not N tracebacks later
        RunDir(out_dir).acquire().abandon()
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        GROUP_RANK="0",
        **{NPROC_ENV: str(nproc)},
    )
    command = worker_command(argv)
    procs: list[subprocess.Popen] = []
    files = []
    handlers = {}

    def forward(signum: int, frame: Any) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.send_signal(signum)

    for sig in FORWARDED:
        handlers[sig] = signal.signal(sig, forward)
    try:
        for rank in range(nproc):
            output = None
            if rank > 0:
                output = open(logs / f"rank{rank}.log", "wb")  # noqa: SIM115 - closed below
                files.append(output)
            procs.append(
                subprocess.Popen(
                    command,
                    env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                    stdout=output,
                    stderr=output,
                    start_new_session=True,  # a terminal's Ctrl-C reaches them once, from here
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
                )
            )
        first = _watch(procs)
    finally:
        for proc in procs:  # an exception here (a second Ctrl-C): nothing is left running
            if proc.poll() is None:
                _stop(proc)
        for sig, old in handlers.items():
            signal.signal(sig, old)
        for f in files:
            f.close()
        for rank in range(1, nproc):
            path = logs / f"rank{rank}.log"
            if path.exists() and path.stat().st_size == 0:
                path.unlink()
        with contextlib.suppress(OSError):
            logs.rmdir()
    codes = [proc.returncode for proc in procs]
    if first is None:
        return next((c for c in codes if c in INTERRUPTED), 0)
    rank, code = first
    if rank == 0 and code > 0:  # rank 0 said why on this terminal
        return code
    how = f"exit status {code}" if code >= 0 else f"killed by {signal.Signals(-code).name}"
    where = "its output is above" if rank == 0 else f"its output: {logs / f'rank{rank}.log'}"
    print(
        f"chanloss: error: process {rank} of {nproc} failed ({how}); {where}",
        file=sys.stderr,
        flush=True,
    )
    return code if code > 0 else 1


def _watch(procs: list[subprocess.Popen]) -> tuple[int, int] | None:
    """Wait for the workers; the first failure ``(rank, status)`` (None when none failed).
    After a failure the others get :data:`GRACE_S` seconds, then are stopped."""
    first: tuple[int, int] | None = None
    deadline = None
    while any(p.poll() is None for p in procs):
        if first is None:
            for rank, proc in enumerate(procs):
                code = proc.poll()
                if code is not None and code != 0 and code not in INTERRUPTED:
                    first, deadline = (rank, code), time.monotonic() + GRACE_S
                    break
        if deadline is not None and time.monotonic() > deadline:
            for proc in procs:
                if proc.poll() is None:
                    _stop(proc)
        time.sleep(0.05)
    if first is None:
        bad = [
            (r, p.returncode) for r, p in enumerate(procs) if p.returncode not in (0, *INTERRUPTED)
        ]
        first = bad[0] if bad else None
    return first


def _stop(proc: subprocess.Popen, wait_s: float = 5.0) -> None:
    """SIGTERM (and SIGCONT, for a stopped process), then SIGKILL after ``wait_s``."""
    with contextlib.suppress(OSError):
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- training ----------------------------------------------------------------------------------
def seed_rank(seed: int) -> None:
    """Seed python, numpy and torch's global generators differently on every rank.

    Called after the model and losses are built (from the shared ``seed``), so that random
    augmentation differs between ranks; a single process keeps its generators untouched.
    """
    world = get_world_size()
    if world <= 1:
        return
    from chanloss.training.builders import seed_everything

    seed_everything(seed * 1_000_003 + 7919 * (get_rank() + 1))


def objective_scale(loss: nn.Module) -> int:
    """The factor of ``loss`` in the back-propagated objective under DDP.

    A loss computed on the batch gathered from all ranks (``gathers_across_ranks``, CC-Loss)
    gives every rank its share of the global gradient, and the shares add up to the global
    gradient; DDP averages over ranks, so the term is multiplied by the world size. Per-rank
    batch means (cross-entropy, MC-Loss) are averaged correctly as they are.
    """
    return get_world_size() if getattr(loss, "gathers_across_ranks", False) else 1


class ModelWithLosses(nn.Module):
    """The model and the configured losses as one module, so DDP synchronises both.

    ``forward(x, labels, generator)`` returns the model's output and, per loss, its terms
    (``loss.terms(out.<consumes>, labels)``; ``generator`` goes to the losses that take one).
    Computing the losses inside the wrapped forward lets DDP see which parameters (the losses'
    included) take part in the step.
    """

    def __init__(
        self, model: nn.Module, losses: Sequence[nn.Module], takes_generator: Sequence[bool]
    ) -> None:
        super().__init__()
        self.model = model
        self.losses = nn.ModuleList(losses)
        self.takes_generator = list(takes_generator)

    def forward(
        self, x: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Any, list[dict[str, Tensor]]]:
        out = self.model(x)
        terms = []
        for index, (loss, takes) in enumerate(zip(self.losses, self.takes_generator, strict=True)):
            kwargs = {"generator": generator} if takes else {}
            try:
                terms.append(loss.terms(getattr(out, loss.consumes), labels, **kwargs))
            except ValueError as err:
                raise LossInputError(index, err) from None
        return out, terms


def wrap_for_training(
    model: nn.Module,
    losses: Sequence[nn.Module],
    takes_generator: Sequence[bool],
    device: torch.device,
    *,
    sync_bn: bool = False,
) -> tuple[nn.Module, nn.Module]:
    """``(model, step_module)``: the step module computes the output and the loss terms.

    In one process ``step_module`` is a plain :class:`ModelWithLosses`. With several ranks it
    is wrapped in DDP (after converting batch norms to ``SyncBatchNorm`` when ``sync_bn``;
    that conversion replaces modules, hence the returned ``model``). DDP looks for parameters
    without a gradient only when no loss consumes the logits (then the classifier is unused).
    """
    world = get_world_size()
    if world > 1 and sync_bn:
        if device.type == "cpu":
            raise ConfigError(
                "distributed.sync_bn needs CUDA devices (torch's SyncBatchNorm does not run on "
                "the CPU); set distributed.sync_bn to false for CPU processes"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    step = ModelWithLosses(model, losses, takes_generator)
    if world <= 1:
        return model, step
    from torch.nn.parallel import DistributedDataParallel

    uses_logits = any(getattr(loss, "consumes", "logits") == "logits" for loss in losses)
    ddp = DistributedDataParallel(
        step,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=not uses_logits,
    )
    return model, ddp


# -- checkpoints -------------------------------------------------------------------------------
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


def log(message: str) -> None:
    """Print a line on the main process only."""
    if is_main_process():
        print(message, flush=True)


__all__ = [
    "BACKENDS",
    "ModelWithLosses",
    "all_gather_object",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "check_world_size",
    "choose_backend",
    "env_world_size",
    "get_rank",
    "get_world_size",
    "init_process_group",
    "is_initialized",
    "is_main_process",
    "launch",
    "worker_command",
    "local_device",
    "local_rank",
    "log",
    "objective_scale",
    "process_group",
    "rank_rng_state",
    "reduce_sum",
    "seed_rank",
    "wrap_for_training",
]
