"""Run every benchmark (what ``make bench`` runs), each in its own process.

    python tools/run_benchmarks.py                  # full measurements -> benchmarks/results/
    python tools/run_benchmarks.py --quick          # smoke run -> benchmarks/results/quick/
    python tools/run_benchmarks.py --only losses,scaling
    python tools/run_benchmarks.py --wait-load 1.5  # first wait until the machine is quiet

Benchmarks: ``losses`` (every registered loss), ``train_step`` (CE vs CE+CC vs CE+MC steps),
``scaling`` (CC/MC vs B, C, K, with a plot), and the CPU-only ``cc_loss`` and ``mc_loss``
(``bench_cc_loss.py``, ``bench_mc_loss.py``). With ``--device cuda`` the CPU-only ones are
skipped. Timings are sensitive to other processes: the 1-minute load average is printed before
each benchmark, and ``--wait-load`` waits (up to ``--wait-max`` seconds) for it to drop below a
threshold first. ``python tools/results_page.py`` (``make report``) then rewrites the README's
results block from the files written here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
QUICK_DIR = RESULTS_DIR / "quick"


#: name -> (script, whether it takes ``--device``, its output file name when it has no
#: ``<name>_<device>.json`` default of its own: those get ``--out`` for ``--quick``)
BENCHMARKS: dict[str, tuple[str, bool, str | None]] = {
    "losses": ("bench_losses.py", True, None),
    "train_step": ("bench_train_step.py", True, None),
    "scaling": ("bench_scaling.py", True, None),
    "cc_loss": ("bench_cc_loss.py", False, "cc_loss_cpu.json"),
    "mc_loss": ("bench_mc_loss.py", False, "mc_loss_cpu.json"),
}


def names_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated names from {list(BENCHMARKS)}, got {text!r}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run into results/quick/")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--only", type=names_list, default=None, help="run only these")
    parser.add_argument("--skip", type=names_list, default=[], help="do not run these")
    parser.add_argument(
        "--wait-load",
        type=float,
        default=None,
        metavar="LOAD",
        help="before each benchmark wait until the 1-minute load average is below LOAD",
    )
    parser.add_argument(
        "--wait-max", type=float, default=3600.0, help="longest wait in seconds (default 3600)"
    )
    return parser


def command(name: str, args: argparse.Namespace) -> list[str] | None:
    """The command line of one benchmark, or None when it does not apply to ``--device``."""
    script, takes_device, cpu_out = BENCHMARKS[name]
    cmd = [sys.executable, str(BENCH_DIR / script), *(["--quick"] if args.quick else [])]
    if takes_device:
        cmd += ["--device", args.device]
    elif not args.device.startswith("cpu"):
        return None
    if args.quick and cpu_out is not None:
        cmd += ["--out", str(QUICK_DIR / cpu_out)]
    return cmd


def wait_for_quiet(threshold: float, longest: float) -> float:
    """Sleep until the 1-minute load average is below ``threshold``; returns the last value."""
    deadline = time.monotonic() + longest
    load = os.getloadavg()[0]
    while load >= threshold and time.monotonic() < deadline:
        print(f"  load average {load:.2f} >= {threshold}; waiting 30 s", flush=True)
        time.sleep(30)
        load = os.getloadavg()[0]
    return load


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    selected = [n for n in (args.only or list(BENCHMARKS)) if n not in args.skip]
    failed, skipped = [], []
    for name in selected:
        cmd = command(name, args)
        if cmd is None:
            skipped.append(name)
            print(f"== {name}: skipped (CPU only, --device {args.device})", flush=True)
            continue
        if args.wait_load is not None:
            wait_for_quiet(args.wait_load, args.wait_max)
        print(f"== {name} (load average {os.getloadavg()[0]:.2f}): {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        status = subprocess.run(cmd, check=False).returncode
        print(f"== {name}: exit {status} after {time.perf_counter() - start:.0f} s\n", flush=True)
        if status != 0:
            failed.append(name)
    print(
        f"done: {len(selected) - len(failed) - len(skipped)} ran, "
        f"{len(skipped)} skipped, failed: {failed or 'none'}"
    )
    if not args.quick and not failed:
        print("update the README results block with: make report")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
