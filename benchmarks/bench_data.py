"""Image decoding throughput per worker and peak memory of the memory and stream modes.

    nice -n 10 python benchmarks/bench_data.py            # 240 images
    python benchmarks/bench_data.py --quick               # 40 images

On a temporary tree of JPEGs of CUB-200-2011's typical sizes (longer side 500 px, shorter
280-500 px, smooth content that compresses like photographs):

- **per-worker rate**: images per wall and per CPU second of one process decoding
  ``ImageFileDataset`` training items (decode, resize, random crop) for recipes ``224``
  (shorter side 256, crop 224), ``448`` (512, 448) and ``448-stretch600`` (600 x 600, 448).
- **peak RSS**: a fresh process builds the data set in ``memory`` and ``stream`` mode (``448``)
  and iterates one training epoch; peak ``ru_maxrss`` beside the RSS after the imports.

Results: ``benchmarks/results/data_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402

NAME = "data"
RECIPES: dict[str, dict[str, Any]] = {
    "224": {"image_size": 224, "resize": 256, "resize_mode": "crop"},
    "448": {"image_size": 448, "resize": 512, "resize_mode": "crop"},
    "448-stretch600": {"image_size": 448, "resize": 600, "resize_mode": "stretch"},
}


def make_tree(root: Path, count: int, seed: int = 0) -> Path:
    """``root/train/c{k}/*.jpg`` and ``root/test/...``: ``count`` training images (and a quarter
    as many test images) in 4 classes, CUB-like sizes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", count), ("test", max(4, count // 4))):
        for i in range(n):
            short = int(rng.integers(280, 501))
            h, w = (short, 500) if rng.random() < 0.7 else (500, short)
            coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
            noise = rng.integers(-12, 13, (h, w, 3))
            pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
            path = root / split / f"c{i % 4}" / f"{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, quality=90)
    return root


def worker_rate(root: Path, recipe: dict[str, Any], images: int) -> dict[str, float]:
    """Training items decoded by this process: images per wall and per CPU second."""
    from chanloss.data import build_datasets

    bundle = build_datasets(
        "image_folder", root=str(root), mode="stream", normalize="imagenet", **recipe
    )
    n = len(bundle.train)
    bundle.train[(0, 0)]  # warm-up (imports, first file)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(images):
        bundle.train[(i % n, i // n)]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "images": images,
        "images_per_s_wall": images / wall,
        "images_per_cpu_s": images / max(cpu, 1e-9),
        "ms_per_image_cpu": 1000 * cpu / images,
    }


_RSS_CHILD = """
import json, resource, sys
import torch
from chanloss.data import build_datasets
from chanloss.run.batches import Batches
torch.set_num_threads(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
bundle = build_datasets("image_folder", root=sys.argv[1], mode=sys.argv[2], normalize="imagenet",
                        image_size=448, resize=512, num_workers=1)
batches = Batches(bundle.train, batch_size=16, device=torch.device("cpu"), train=True, workers=0)
seen = sum(int(y.shape[0]) for _, y in batches.epoch(0))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mode": bundle.mode, "after_imports_mb": before / 1024,
                  "peak_mb": peak / 1024, "images_seen": seen}))
"""


def peak_rss(root: Path, mode: str) -> dict[str, Any]:
    """Peak RSS of a fresh process that builds the set in ``mode`` and runs one epoch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    src = str(common.REPO_ROOT / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(root), mode],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["data_mb"] = result["peak_mb"] - result["after_imports_mb"]
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_args(parser)
    parser.add_argument("--images", type=common.positive_int, default=240, help="training images")
    parser.add_argument("--decode", type=common.positive_int, default=120, help="items timed")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.images, args.decode = 40, 20
    device = common.setup(args)
    if device.type != "cpu":
        raise SystemExit("bench_data measures CPU decoding; use --device cpu")
    info = common.machine_info(device)
    common.log(common.describe(info))
    with tempfile.TemporaryDirectory(prefix="chanloss-bench-data-") as tmp:
        root = make_tree(Path(tmp), args.images)
        rates = {}
        for name, recipe in RECIPES.items():
            rates[name] = {**recipe, **worker_rate(root, recipe, args.decode)}
            common.log(
                f"{name:>15}: {rates[name]['images_per_cpu_s']:.1f} images per CPU second "
                f"({rates[name]['images_per_s_wall']:.1f}/s wall) per worker"
            )
        memory = {mode: peak_rss(root, mode) for mode in ("memory", "stream")}
        for mode, r in memory.items():
            common.log(
                f"{mode:>15}: peak RSS {r['peak_mb']:.0f} MB ({r['data_mb']:.0f} MB above the "
                f"{r['after_imports_mb']:.0f} MB after imports), {r['images_seen']} images"
            )
    stored = args.images * 3 * 512 * 512 / 2**20
    payload = {
        "benchmark": "image decoding per worker (decode + resize + random crop) and peak RSS "
        "of memory vs stream mode, on generated CUB-sized JPEGs",
        "machine": info,
        "machine_after": {"load_average": [round(v, 2) for v in os.getloadavg()]},
        "quick": args.quick,
        "train_images": args.images,
        "per_worker": rates,
        "peak_rss": memory,
        "memory_mode_pixels_mb": stored + max(4, args.images // 4) * 3 * 512 * 512 / 2**20,
        "peak_rss_of_this_process_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    common.write_json(args.out or common.default_out(NAME, device, args.quick), payload, say=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
