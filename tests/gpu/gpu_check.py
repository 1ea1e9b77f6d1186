"""Everything a GPU must confirm, in one run of at most about five minutes on one GPU.

Run it through ``benchmarks/gpu_check.sh`` (or directly). Sections, each timed and recorded
even when another one fails:

1. ``losses``: every registered loss on CUDA equals the CPU result in float32 (value and the
   gradients of the input and of the loss's parameters, TF32 off; MC-Loss with the same
   channel mask on both), and stays finite under float16 and bfloat16 autocast.
2. ``backbones``: a few training steps of each built-in backbone with AMP (float16 and a
   gradient scaler) and channels-last, CE plus MC-Loss where the map has a channel per class;
   the step time of ResNet-50 at 448 px and VGG16-BN (600 channels) at 224 px gives the
   time per CUB epoch (``epoch_estimate_s``: 5,994 training images per epoch, no data wait).
3. ``loss_speed``: MC-Loss and CC-Loss forward + backward against the softmax cross-entropy
   floor on the logits of the same batch, at the CUB shapes.
4. ``stream``: stream-mode loading of generated CUB-sized JPEGs at 448 px (``workers``
   processes, pinned memory), alone and feeding ResNet-50 training steps.
5. ``ddp``: ``chanloss train --nproc N`` with NCCL when more than one GPU is present.
6. ``benchmarks``: ``bench_train_step.py`` (the train-step overhead) and ``bench_losses.py``
   on CUDA, which write ``results/train_step_cuda.json`` and ``results/losses_cuda.json``.

Writes ``benchmarks/results/gpu_check_cuda.json`` (``make report`` shows it in the README).
Without CUDA it says so and exits 0. ``--device cpu --quick`` runs sections 1-4 at toy sizes
on the CPU (a dry run of the script itself; the tests use it) and writes nothing unless
``--out`` is given.

    bash benchmarks/gpu_check.sh             # on a GPU machine
    python tests/gpu/gpu_check.py --device cpu --quick --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # _common

import _common as common  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_sections import (  # noqa: E402
    NAME,
    _sync,
    check_backbones,
    check_loss_speed,
    check_losses,
)


# -- 4. stream mode ------------------------------------------------------------------------------
def check_stream(device: torch.device, quick: bool, workers: int | None) -> dict[str, Any]:
    from bench_data import make_tree

    from chanloss.data import build_datasets
    from chanloss.losses import create_loss
    from chanloss.models import create_model
    from chanloss.run.builders import Batches

    images = 8 if quick else 384
    size, resize = (32, 40) if quick else (448, 512)
    batch = 4 if quick else 32
    workers = (
        workers if workers is not None else (0 if quick else min(8, (os.cpu_count() or 2) - 1))
    )
    with tempfile.TemporaryDirectory(prefix="chanloss-gpu-check-") as tmp:
        make_tree(Path(tmp), images)
        bundle = build_datasets(
            "image_folder",
            root=tmp,
            mode="stream",
            normalize="imagenet",
            image_size=size,
            resize=resize,
        )
        batches = Batches(
            bundle.train, batch_size=batch, device=device, train=True, workers=workers
        )
        try:
            for _ in batches.epoch(0):  # starts the workers
                pass
            _sync(device)
            start = time.perf_counter()
            seen = 0
            for x, _ in batches.epoch(1):
                seen += x.shape[0]
            _sync(device)
            loading = seen / (time.perf_counter() - start)
            model = create_model("resnet50", num_classes=4, **({"width": 0.25} if quick else {}))
            model = model.to(device).to(memory_format=torch.channels_last).train()
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            ce = create_loss("ce").to(device)
            scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
            amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
            start = time.perf_counter()
            seen = 0
            for x, y in batches.epoch(2):
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=amp_dtype):
                    loss = ce(model(x).logits, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                seen += x.shape[0]
            _sync(device)
            training = seen / (time.perf_counter() - start)
        finally:
            batches.close()
    result = {
        "recipe": f"shorter side {resize}, random {size} crop",
        "images": images,
        "batch": batch,
        "workers": workers,
        "loading_images_per_s": loading,
        "resnet50_training_images_per_s": training,
    }
    common.log(
        f"  {workers} workers: loading {loading:.0f} img/s, feeding ResNet-50 training "
        f"{training:.0f} img/s"
    )
    return result


# -- 5./6. subprocesses --------------------------------------------------------------------------
def _run(cmd: list[str], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(common.REPO_ROOT / "src")}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=common.REPO_ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"command": cmd, "status": f"timed out after {timeout:.0f} s"}
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return {
        "command": cmd,
        "status": "ok" if done.returncode == 0 else f"failed (exit {done.returncode})",
        "seconds": time.perf_counter() - start,
        "output_tail": tail,
    }


def check_ddp(device: torch.device) -> dict[str, Any]:
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus < 2:
        return {"gpus": gpus, "status": "skipped: needs more than one GPU"}
    with tempfile.TemporaryDirectory(prefix="chanloss-gpu-ddp-") as tmp:
        config = Path(tmp) / "ddp.yaml"
        config.write_text(
            "model: {name: resnet20}\ndata: {name: digits}\nlosses: [{name: ce}, {name: cc}]\n"
            "epochs: 1\nbatch_size: 64\ndevice: cuda\ndistributed: {backend: nccl}\n"
        )
        cmd = [
            sys.executable,
            "-m",
            "chanloss",
            "train",
            "-c",
            str(config),
            "--out",
            str(Path(tmp) / "run"),
            "--nproc",
            str(gpus),
            "-q",
        ]
        result = _run(cmd, 150)
        result["gpus"] = gpus
        result["finished"] = (Path(tmp) / "run" / "summary.json").exists()
    return result


def run_benchmarks() -> dict[str, Any]:
    bench = common.BENCH_DIR
    return {
        "train_step": _run(
            [
                sys.executable,
                str(bench / "bench_train_step.py"),
                "--device",
                "cuda",
                "--rounds",
                "10",
            ],
            90,
        ),
        "losses": _run(
            [
                sys.executable,
                str(bench / "bench_losses.py"),
                "--device",
                "cuda",
                "--rounds",
                "10",
                "--no-memory",
            ],
            60,
        ),
    }


def _section(name: str, fn: Callable[[], Any], payload: dict[str, Any]) -> None:
    common.log(f"[{name}]")
    start = time.perf_counter()
    try:
        payload[name] = fn()
    except Exception as err:  # noqa: BLE001 - recorded; the other sections still run
        payload[name] = None
        payload.setdefault("errors", {})[name] = "".join(
            traceback.format_exception_only(type(err), err)
        ).strip()
        common.log(f"  FAILED: {payload['errors'][name]}")
    payload.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes (a dry run)")
    parser.add_argument("--workers", type=int, default=None, help="stream-mode workers")
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        common.log(
            f"gpu_check: CUDA is not available (torch {torch.__version__}); nothing to check "
            "on this machine. Run it where a GPU is present."
        )
        return 0
    info = common.machine_info(device)
    common.log(common.describe(info))
    payload: dict[str, Any] = {
        "benchmark": "GPU check: losses CUDA vs CPU, AMP/channels-last backbones, MC/CC vs the "
        "softmax floor, stream-mode loading, DDP with NCCL",
        "machine": info,
        "quick": args.quick,
    }
    _section("losses", lambda: check_losses(device, args.quick), payload)
    _section("backbones", lambda: check_backbones(device, args.quick), payload)
    _section("loss_speed", lambda: check_loss_speed(device, args.quick), payload)
    _section("stream", lambda: check_stream(device, args.quick, args.workers), payload)
    if device.type == "cuda" and not args.quick:
        _section("ddp", lambda: check_ddp(device), payload)
        _section("benchmarks", run_benchmarks, payload)
    losses = payload.get("losses") or []
    backbones = payload.get("backbones") or []
    payload["ok"] = (
        not payload.get("errors")
        and all(r["fp32_match"] and r["fp16_finite"] is not False for r in losses)
        and all(r["bf16_finite"] is not False for r in losses)
        and all(r["finite"] for r in backbones)
    )
    payload["machine_after"] = {"load_average": [round(v, 2) for v in os.getloadavg()]}
    out = args.out
    if out is None and device.type == "cuda" and not args.quick:
        out = common.RESULTS_DIR / f"{NAME}_cuda.json"
    if out is not None:
        common.write_json(out, payload)
        common.log(f"wrote {out}")
    common.log(f"gpu_check: {'all checks passed' if payload['ok'] else 'SOME CHECKS FAILED'}")
    return 0 if payload["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
