"""Image files decoded as they look (issue 33): EXIF orientation applied and 16-bit grey scaled
to 8 bits, alike in training (memory and stream mode), the decode cache and prediction; the
``auto`` image size is the rounded median of a larger sample, says how the sizes spread and
is stored in the run's config; images too small for the model's poolings are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from chanloss.cli import main
from chanloss.data import build_datasets
from chanloss.inference import Preprocessing

ORIENTATION = 0x0112


def sideways_jpeg(path: Path) -> None:
    """A photo stored 24 wide x 12 high, dark left half, bright right half, with EXIF
    orientation 6 (turn 90 degrees clockwise to show it): it looks 12 wide x 24 high, dark
    top half, bright bottom half."""
    stored = np.zeros((12, 24), dtype=np.uint8)
    stored[:, 12:] = 250
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stored, "L").save(path, quality=95, exif=exif)


def sixteen_bit_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.full((8, 8), value, dtype=np.uint16))
    assert image.mode == "I;16"
    image.save(path)


def _upright(pixels: torch.Tensor) -> None:
    """(1, 24, 12) pixels of :func:`sideways_jpeg` (uint8, or floats in [0, 1]): dark top,
    bright bottom."""
    assert pixels.shape == (1, 24, 12)
    grey = pixels * 255.0 if pixels.is_floating_point() else pixels.float()
    assert grey[:, :10].mean() < 30 and grey[:, 14:].mean() > 220


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_exif_orientation_is_applied_in_training_the_cache_and_predict(
    tmp_path: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for split in ("train", "test"):
        for name in ("a", "b"):
            for i in range(2):
                sideways_jpeg(tmp_path / "photos" / split / name / f"{i}.jpg")
    root = str(tmp_path / "photos")
    cache = str(tmp_path / "cache") if mode == "memory" else None
    bundle = build_datasets("image_folder", root=root, mode=mode, cache_dir=cache)
    # auto size from the headers: the size the photo is shown at (height 24, width 12)
    assert "image_size auto -> 24x12 (all 4 sampled training images)" in capsys.readouterr().out
    for split in (bundle.train, bundle.test):
        _upright(split[0][0])
    if mode == "memory":  # read back from the cache file
        again = build_datasets("image_folder", root=root, mode=mode, cache_dir=cache)
        _upright(again.train.images[0])
    pre = Preprocessing("L", (24, 12), "stretch", None, None, (0.5,), (0.5,))
    _upright(pre.load_image(tmp_path / "photos" / "test" / "a" / "0.jpg") * 255)


def test_sixteen_bit_pngs_are_scaled_to_eight_bits_not_saturated(tmp_path: Path) -> None:
    values = {"dark": 8000, "mid": 32896, "bright": 60000}  # 8-bit: 31, 128, 233
    for split in ("train", "test"):
        for name, value in values.items():
            for i in range(2):
                sixteen_bit_png(tmp_path / "scans" / split / name / f"{i}.png", value + i)
    bundle = build_datasets("image_folder", root=str(tmp_path / "scans"), mode="stream")
    assert bundle.in_channels == 1  # 16-bit grey is grey
    seen = {round(float(bundle.train[i][0].float().mean())) for i in range(len(bundle.train))}
    assert seen == {31, 128, 233}
    pre = Preprocessing("L", (8, 8), "crop", None, None, (0.5,), (0.5,))
    pixels = pre.load_image(tmp_path / "scans" / "test" / "mid" / "0.png") * 255
    assert torch.allclose(pixels, torch.full_like(pixels, 128.0), atol=0.5)


def _photo_folder(root: Path, sizes: list[tuple[int, int]]) -> Path:
    """Two classes of RGB noise photos of ``sizes`` (width, height), in train/ only."""
    rng = np.random.default_rng(0)
    for i, (width, height) in enumerate(sizes):
        folder = root / "train" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(noise, "RGB").save(folder / f"{i}.png")
    return root


TRAIN = {
    "model": {"name": "convnet_small", "width": 4, "feature_channels": 4, "pools": 1},
    "losses": [{"name": "ce"}],
    "epochs": 1,
    "batch_size": 8,
    "device": "cpu",
}


def test_auto_size_is_the_rounded_median_says_the_spread_and_is_stored_in_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # mixed sizes (as a folder of photos): the most common size (31x31, 3 images) is not typical
    sizes = [(31, 31)] * 3 + [
        (w, h) for w, h in zip(range(21, 95, 4), range(30, 67, 2), strict=False)
    ]
    root = _photo_folder(tmp_path / "photos", sizes)
    heights = sorted(h for _, h in sizes)
    widths = sorted(w for w, _ in sizes)
    height = 8 * round(float(np.median(heights)) / 8)
    width = 8 * round(float(np.median(widths)) / 8)
    assert (height, width) != (31, 31)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**TRAIN, "data": {"name": "image_folder", "root": str(root)}}))
    run = tmp_path / "run"
    assert main(["train", "-c", str(cfg), "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"image_size auto -> {height}x{width} (the median of {len(sizes)} sampled" in out
    assert f"heights {heights[0]}-{heights[-1]}, widths {widths[0]}-{widths[-1]} px" in out
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["data"]["options"]["image_size"] == [height, width]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["config"]["data"]["options"]["image_size"] == [height, width]
    # the stored size is the run's own choice: the same config (auto) still finds it done
    from chanloss.config import load_config
    from chanloss.experiments.runner import run_status

    assert run_status(run, load_config(cfg)) == "done"
    # and --resume reads it from config.yaml: a folder changed since keeps the run's size
    _photo_folder(tmp_path / "photos", [(90, 90)] * 40)
    assert main(["train", "--out", str(run), "--resume", "--set", "epochs=2"]) == 0
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    assert "image_size auto" not in capsys.readouterr().out


def test_a_folder_of_1x1_images_is_one_line_naming_the_smallest_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _photo_folder(tmp_path / "dots", [(1, 1)] * 12)
    raw = {**TRAIN, "model": {"name": "convnet_small", "width": 4, "feature_channels": 4}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**raw, "data": {"name": "image_folder", "root": str(root)}}))
    assert main(["train", "-c", str(cfg), "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("chanloss: error: data: the images are 1x1 pixels")
    assert "too small for the poolings of model 'convnet_small': it needs at least 2x2" in lines[0]
    assert "set data.options.image_size: 2 or more" in lines[0]
    # the size it names works
    argv = ["train", "-c", str(cfg), "--out", str(tmp_path / "ok")]
    assert main([*argv, "--set", "data.options.image_size=2"]) == 0
