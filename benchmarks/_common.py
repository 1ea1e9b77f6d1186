"""Shared helpers of the benchmark scripts: command line, machine record (:func:`machine_info`),
interleaved timing (:func:`time_clocks`, :func:`stats`), peak memory (:func:`peak_bytes`),
atomic JSON output (:func:`write_json`) and the study's recipes for shrunk training runs."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from chanloss.core import atomic

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
QUICK_DIR = RESULTS_DIR / "quick"


# -- command line --------------------------------------------------------------------------------
def add_common_args(parser: argparse.ArgumentParser, *, default_threads: int | None = 1) -> None:
    """``--quick``, ``--device``, ``--threads``, ``--out`` (the options every script shares)."""
    parser.add_argument("--quick", action="store_true", help="few sizes and repeats (seconds)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads,
        help=f"torch.set_num_threads (default {default_threads or 'all cores'})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default benchmarks/results/<name>_<device>.json; --quick: "
        "benchmarks/results/quick/)",
    )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated integers >= 1 (``"16,32,64"``)."""
    values = [positive_int(v) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return values


def setup(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and check ``--device``; returns the device."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return device


def output_dirs(args: argparse.Namespace, name: str) -> tuple[Path, Path]:
    """``(runs, results)`` of a training benchmark: ``--runs`` or ``runs/<name>`` (with
    ``--quick``: ``runs/<name>-quick``) and ``--results`` or ``benchmarks/results`` (``quick/``)."""
    runs = args.runs or REPO_ROOT / "runs" / (f"{name}-quick" if args.quick else name)
    return runs, args.results or (QUICK_DIR if args.quick else RESULTS_DIR)


def command_line(script: str, argv: list[str] | None) -> str:
    """``python benchmarks/<script> ARGS``: how a results file was made, as it records it."""
    where = Path(script).resolve().relative_to(REPO_ROOT)
    return " ".join(["python", str(where), *(sys.argv[1:] if argv is None else argv)])


def provenance(command: str, **extra: Any) -> dict[str, Any]:
    """``{"command", "git", ...}``: what rewrote a part of a results file, and at which commit."""
    return {"command": command, "git": git_commit(), **extra}


def default_out(name: str, device: torch.device, quick: bool) -> Path:
    """``results/<name>_<device type>.json``, or under ``results/quick/`` for ``--quick``."""
    return (QUICK_DIR if quick else RESULTS_DIR) / f"{name}_{device.type}.json"


# -- machine -------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> dict[str, Any]:
    """The commit of the working tree and whether tracked files differ from it (read-only), not
    counting ``benchmarks/results/`` (which the benchmarks themselves rewrite)."""
    commit = _git("rev-parse", "HEAD")
    status = _git(
        "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"
    )
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What produced a result: CPU, cores, torch, threads, device, git commit, load, time."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "git": git_commit(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def describe(info: dict[str, Any]) -> str:
    """One line for the console: torch, CPU/GPU, threads, load."""
    where = info.get("gpu") or info["cpu_model"]
    return (
        f"torch {info['torch']}, {where}, {info['cpu_count']} cores, "
        f"{info['torch_threads']} torch threads, load {info['load_average'][0]:.2f}, "
        f"commit {(info['git']['commit'] or '?')[:10]}{'+dirty' if info['git']['dirty'] else ''}"
    )


# -- timing --------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_clocks(
    fns: dict[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int,
    device: torch.device | str = "cpu",
    reps: int = 1,
    prime: bool = False,
) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of every variant on two clocks, ``{"wall": {name: [...]}, "cpu": ...}``:
    ``warmup`` untimed calls each, then ``rounds`` rounds timing the mean of ``reps`` calls of
    every variant in an order rotating per round (load and drift hit all alike; CUDA synchronised).
    ``prime``: an untimed call before each timed block (the allocator in the variant's own steady
    state). ``cpu`` is this thread's CPU time: with one torch thread, others' load left out."""
    device = torch.device(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    names = list(fns)
    samples: dict[str, dict[str, list[float]]] = {
        clock: {name: [] for name in names} for clock in ("wall", "cpu")
    }
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if prime:
                fns[name]()
            _sync(device)
            wall, cpu = time.perf_counter(), time.thread_time()
            for _ in range(reps):
                fns[name]()
            _sync(device)
            samples["wall"][name].append((time.perf_counter() - wall) / reps)
            samples["cpu"][name].append((time.thread_time() - cpu) / reps)
    return samples


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    rounds: int,
    warmup: int,
    device: torch.device | str = "cpu",
) -> dict[str, list[float]]:
    """Wall seconds per call of every variant (:func:`time_clocks`, one call per round)."""
    return time_clocks(fns, rounds=rounds, warmup=warmup, device=device)["wall"]


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (``statistics.quantiles`` needs two or more values)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("quantile of an empty list")
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def stats(seconds: list[float]) -> dict[str, float]:
    """Median, quartiles and minimum in milliseconds, and the number of samples."""
    ms = [1e3 * s for s in seconds]
    return {
        "median_ms": round(statistics.median(ms), 4),
        "p25_ms": round(quantile(ms, 0.25), 4),
        "p75_ms": round(quantile(ms, 0.75), 4),
        "min_ms": round(min(ms), 4),
        "n": len(ms),
    }


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (kineto prints a line per profiler start and stop)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# -- memory --------------------------------------------------------------------------------------
def peak_bytes(
    fn: Callable[[], object],
    *,
    reset: Callable[[], object] | None = None,
    device: torch.device | str = "cpu",
) -> int:
    """Peak bytes allocated during ``fn`` on top of what existed before: on CUDA
    ``max_memory_allocated`` above the allocation before; on the CPU the maximum running sum of
    ``torch.profiler`` allocation records (tensor storage only), in an untimed run. ``reset``
    (e.g. dropping old gradients) runs first, unmeasured: such frees would lower the CPU sum."""
    device = torch.device(device)
    if reset is not None:
        reset()
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation:
            events.append((event.start_time_ns, event.extra_fields.alloc_size))
    current = peak = 0
    for _, size in sorted(events):
        current += size
        peak = max(peak, current)
    return int(peak)


# -- output --------------------------------------------------------------------------------------
def write_json(path: Path, payload: dict[str, Any], *, say: bool = False) -> None:
    """Write ``payload`` as indented JSON, atomically (the parent folder made if missing);
    ``say``: print ``wrote PATH``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, payload)
    if say:
        log(f"wrote {path}")


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in ``path`` (an earlier results file), or ``default`` when there is none."""
    return json.loads(Path(path).read_text()) if Path(path).exists() else default


#: The options the speed benchmarks build a loss with: CC-Loss as its results were recorded, with
#: its own side-branch attention (the gate placement reads the model's: the same pair stage).
LOSS_OPTIONS: dict[str, dict[str, Any]] = {"cc": {"placement": "branch"}}


# -- runs ----------------------------------------------------------------------------------------
#: The study's training recipe per data set (benchmarks/study/study.yaml), shared by the
#: benchmarks that train shrunk versions of it.
STUDY_RECIPES: dict[str, dict[str, Any]] = yaml.safe_load(
    (BENCH_DIR / "study" / "study.yaml").read_text()
)["recipes"]


def train_run(raw: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train one config into ``run_dir`` through the package's runner (a finished run is read,
    an interrupted one resumed, a diverged one recorded and not trained again):
    ``{"status": "finished" | "diverged", "val_acc", "test_acc", "time_s"}``."""
    from chanloss.config import load_config
    from chanloss.experiments.runner import KeepDiverged, run_many

    [got] = run_many([(load_config(raw=raw), Path(run_dir))], worker=KeepDiverged())
    if "diverged" in got:
        return {"status": "diverged", "val_acc": None, "test_acc": None, "time_s": None}
    return {"status": "finished", "val_acc": got.final_val_acc,
            "test_acc": got.final_test_acc, "time_s": got.train_time_s}  # fmt: skip


def log(message: str) -> None:
    """Print and flush (the scripts' output is often piped to a log file)."""
    print(message, flush=True)
