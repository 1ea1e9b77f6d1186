"""Stream mode, the fine-grained crop recipe and the decoded-image cache, on generated JPEG trees
(CUB-200-2011 layout and image folders, images of mixed sizes and aspect ratios)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from chanloss.config import ConfigError, load_config
from chanloss.data import DatasetError, build_datasets
from chanloss.data.files import ImageSpec, eval_pixels
from chanloss.run.builders import Batches, build_augmentations
from chanloss.run.session import train

CPU = torch.device("cpu")


def _jpeg(path, rng, height, width):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def _folder_tree(root, per_class=3):
    """root/{train,test}/{c0,c1,c2}/*.jpg, sizes between 17 and 41 px (portrait and landscape)."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(3):
            for i in range(per_class):
                h, w = (int(v) for v in rng.integers(17, 42, 2))
                _jpeg(root / split / f"c{c}" / f"{i}.jpg", rng, h, w)
    return root


def _cub_tree(root):
    """CUB_200_2011/ with 2 classes, 8 images (5 train, 3 test) of mixed sizes."""
    base = root / "CUB_200_2011"
    rng = np.random.default_rng(1)
    names, labels, split = [], [], []
    for i in range(8):
        cls = 1 + i % 2
        rel = f"{cls:03d}.bird_{cls}/img_{i}.jpg"
        h, w = (int(v) for v in rng.integers(19, 45, 2))
        _jpeg(base / "images" / rel, rng, h, w)
        names.append(f"{i + 1} {rel}")
        labels.append(f"{i + 1} {cls}")
        split.append(f"{i + 1} {int(i not in (2, 5, 7))}")
    (base / "images.txt").write_text("\n".join(names) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "classes.txt").write_text("1 001.bird_1\n2 002.bird_2\n")
    return root


def _eval_batches(bundle, split, workers=0):
    """The evaluation batches of a split after the eval augmentation (ImageNet statistics)."""
    config = load_config(
        raw={
            "model": {"name": "convnet_small"},
            "data": {"name": "digits"},
            "losses": [{"name": "ce"}],
        }
    )
    _, evaluate = build_augmentations(config, bundle, CPU)
    dataset = getattr(bundle, split)
    if bundle.mode == "stream" and split == "train":
        dataset = dataset.with_train(False)
    batches = Batches(dataset, batch_size=4, device=CPU, train=False, workers=workers)
    return torch.cat([evaluate(x) for x, _ in batches.epoch(0)])


def _pil_eval_reference(path, resize, size):
    """Shorter side to ``resize`` (PIL bilinear), centre square, centre ``size`` crop."""
    image = Image.open(path).convert("RGB")
    scale = resize / min(image.size)
    w, h = max(resize, round(image.width * scale)), max(resize, round(image.height * scale))
    image = image.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - resize) // 2, (h - resize) // 2
    square = np.array(image)[top : top + resize, left : left + resize]
    off = (resize - size) // 2
    return square[off : off + size, off : off + size]


@pytest.mark.parametrize("layout", ["cub200", "image_folder"])
def test_stream_and_memory_give_the_same_evaluation_pixels(tmp_path, layout):
    root = _cub_tree(tmp_path) if layout == "cub200" else _folder_tree(tmp_path)
    opts = {"image_size": 12, "resize": 17, "normalize": "imagenet"}
    memory = build_datasets(layout, root=str(root), mode="memory", **opts)
    stream = build_datasets(layout, root=str(root), mode="stream", **opts)
    assert (memory.mode, stream.mode) == ("memory", "stream")
    assert memory.train.images.shape[2:] == (17, 17) and memory.crop == (12, 12)
    assert memory.image_size == stream.image_size == (12, 12) and stream.crop is None
    assert memory.mean == stream.mean
    for split in ("test", "train"):
        a, b = _eval_batches(memory, split), _eval_batches(stream, split)
        assert a.shape == (len(getattr(memory, split)), 3, 12, 12)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # and the pixels are the recipe's: shorter side to 17, centre 17 x 17, centre 12 x 12
    path = stream.test.paths[0]
    reference = _pil_eval_reference(path, 17, 12)
    spec = ImageSpec((12, 12), 17)
    np.testing.assert_array_equal(eval_pixels(path, spec, layout), reference)
    np.testing.assert_array_equal(stream.test[0][0].permute(1, 2, 0).numpy(), reference)


def test_without_resize_both_modes_match_the_existing_fit(tmp_path):
    root = _folder_tree(tmp_path)
    for resize_mode in ("crop", "stretch"):
        opts = {"image_size": (10, 14), "resize_mode": resize_mode}
        memory = build_datasets("image_folder", root=str(root), **opts)
        stream = build_datasets("image_folder", root=str(root), mode="stream", **opts)
        assert memory.crop is None and memory.train.images.shape[2:] == (10, 14)
        stacked = torch.stack([stream.test[i][0] for i in range(len(stream.test))])
        torch.testing.assert_close(stacked, memory.test.images, rtol=0, atol=0)
        # training items need no random crop: they equal the evaluation items
        torch.testing.assert_close(stream.train[(1, 5)][0], memory.train.images[1])


def _train_epochs(bundle, workers, epochs=(0, 1)):
    batches = Batches(bundle.train, batch_size=4, device=CPU, train=True, seed=3, workers=workers)
    try:
        return [[(x.clone(), y.clone()) for x, y in batches.epoch(e)] for e in epochs]
    finally:
        batches.close()


def test_stream_training_crops_repeat_whatever_the_workers(tmp_path):
    root = _folder_tree(tmp_path)
    bundle = build_datasets(
        "image_folder", root=str(root), image_size=12, resize=20, mode="stream", seed=3
    )
    in_process = _train_epochs(bundle, workers=0)
    two_workers = _train_epochs(bundle, workers=2)
    for a_epoch, b_epoch in zip(in_process, two_workers, strict=True):
        assert len(a_epoch) == len(b_epoch) == 2
        for (xa, ya), (xb, yb) in zip(a_epoch, b_epoch, strict=True):
            assert xa.shape == (4, 3, 12, 12) and xa.dtype == torch.float32
            torch.testing.assert_close(xa, xb, rtol=0, atol=0)
            assert torch.equal(ya, yb)
    # a resumed epoch starts at a later batch and gets the same crops
    batches = Batches(bundle.train, batch_size=4, device=CPU, train=True, seed=3, workers=2)
    try:
        resumed = [x for x, _ in batches.epoch(1, start=1)]
    finally:
        batches.close()
    assert len(resumed) == 1 and torch.equal(resumed[0], in_process[1][1][0])
    # the crops are random: an image's crop changes with the epoch and with the seed
    item = bundle.train[(0, 0)][0]
    assert not torch.equal(item, bundle.train[(0, 1)][0])
    assert torch.equal(item, bundle.train[(0, 0)][0])
    other = build_datasets(
        "image_folder", root=str(root), image_size=12, resize=20, mode="stream", seed=4
    )
    assert not torch.equal(item, other.train[(0, 0)][0])


def test_corrupt_image_in_stream_mode_stops_with_the_file_named(tmp_path):
    root = _folder_tree(tmp_path)
    bad = root / "train" / "c1" / "1.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    with pytest.raises(DatasetError, match=f"cannot read image {bad}"):  # the statistics sample
        build_datasets("image_folder", root=str(root), image_size=12, mode="stream")
    bundle = build_datasets(
        "image_folder", root=str(root), image_size=12, mode="stream", normalize="imagenet"
    )
    batches = Batches(bundle.train, batch_size=3, device=CPU, train=True, workers=2)
    result: dict = {}

    def consume():
        try:
            for _ in batches.epoch(0):
                pass
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            result["error"] = err

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the DataLoader workers hung on a corrupt image"
    err = result["error"]
    assert isinstance(err, ConfigError)
    message = str(err)
    assert "\n" not in message and message.startswith("data: image_folder: cannot read image")
    assert str(bad) in message
    assert batches._loader is None  # the workers were shut down


def test_auto_mode_streams_above_the_memory_budget(tmp_path):
    root = _folder_tree(tmp_path)
    # 18 images x 3 x 20 x 20 bytes = 21,600 bytes in memory mode
    small = build_datasets("image_folder", root=str(root), image_size=12, resize=20, mode="auto")
    assert small.mode == "memory"
    tight = build_datasets(
        "image_folder",
        root=str(root),
        image_size=12,
        resize=20,
        mode="auto",
        memory_budget_gb=21_599 / 1e9,
    )
    assert tight.mode == "stream"
    fits = build_datasets(
        "image_folder",
        root=str(root),
        image_size=12,
        resize=20,
        mode="auto",
        memory_budget_gb=21_600 / 1e9,
    )
    assert fits.mode == "memory"


def test_cache_is_reused_and_invalidated_when_files_or_options_change(tmp_path, monkeypatch):
    import chanloss.data.files as files

    root = _folder_tree(tmp_path / "data")
    cache = tmp_path / "cache"
    opts = {"image_size": 12, "resize": 16, "cache_dir": str(cache)}
    first = build_datasets("image_folder", root=str(root), **opts)
    written = sorted(p.name for p in cache.glob("*.npy"))
    assert len(written) == 2 and written[0].startswith("image_folder-test-")
    plain = build_datasets("image_folder", root=str(root), image_size=12, resize=16)
    assert torch.equal(first.train.images, plain.train.images)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(files, "stored_pixels", no_decoding)
    again = build_datasets("image_folder", root=str(root), **opts)
    assert torch.equal(again.test.images, first.test.images)
    monkeypatch.undo()

    # a changed file gives a new cache file for its split; the stale one is removed
    rng = np.random.default_rng(9)
    _jpeg(root / "test" / "c0" / "0.jpg", rng, 30, 33)
    changed = build_datasets("image_folder", root=str(root), **opts)
    now = sorted(p.name for p in cache.glob("*.npy"))
    assert now[1] == written[1] and now[0] != written[0] and len(now) == 2
    assert not torch.equal(changed.test.images[0], first.test.images[0])
    # another size is another key
    build_datasets("image_folder", root=str(root), image_size=12, resize=18, cache_dir=str(cache))
    assert not set(p.name for p in cache.glob("*.npy")) & set(now)
    assert not list(cache.glob(".*.tmp"))


def test_stream_and_cache_options_reject_what_they_cannot_do(tmp_path):
    root = str(_folder_tree(tmp_path))
    with pytest.raises(ValueError, match="mode 'stream' decodes image files .*'digits'"):
        build_datasets("digits", mode="stream")
    with pytest.raises(ValueError, match="cache_dir keeps decoded image files"):
        build_datasets("digits", cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match=r"resize \(10\) must be at least image_size \[12, 12\]"):
        build_datasets("image_folder", root=root, image_size=12, resize=10)
    with pytest.raises(ValueError, match="mode must be one of"):
        build_datasets("image_folder", root=root, mode="disk")
    symmetric = build_datasets("image_folder", root=root, image_size=12, normalize="symmetric")
    assert symmetric.mean == symmetric.std == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="normalize must be one of"):
        build_datasets("image_folder", root=root, normalize="cifar")


def test_a_stream_run_trains_and_evaluates_from_a_config(tmp_path):
    root = _cub_tree(tmp_path / "data")
    raw = {
        "model": {"name": "convnet_small", "width": 2, "feature_channels": 4, "pools": 1},
        "data": {
            "name": "cub200",
            "root": str(root),
            "mode": "stream",
            "options": {"image_size": 12, "resize": 16},
            "augment": {"hflip": True},
        },
        "losses": [{"name": "ce"}],
        "epochs": 1,
        "batch_size": 4,
        "workers": 1,
        "device": "cpu",
    }
    summary = train(load_config(raw=raw), tmp_path / "run", verbose=0)
    assert summary["finished"] and summary["final_test_acc"] is not None
    # the analysis shows the test images as the model saw them (decoded, centre crop)
    from chanloss.analysis.collect import collect, load_trainer

    checkpoint = tmp_path / "run" / "last.pt"
    trainer, state = load_trainer(checkpoint, device="cpu")
    data = collect(trainer, label="stream", checkpoint=checkpoint, epoch=1, images=2)
    assert data.example_images.shape == (2, 3, 12, 12)
    expected = trainer.data.test[int(data.examples[0])][0].float() / 255
    torch.testing.assert_close(data.example_images[0], expected)
    with pytest.raises(ConfigError, match="data.mode"):
        load_config(raw={**raw, "data": {**raw["data"], "mode": "disk"}})


@pytest.mark.parametrize("workers", [1, 3])
def test_a_long_decode_prints_progress_lines(tmp_path, monkeypatch, capsys, workers):
    from chanloss.data import files

    root = _folder_tree(tmp_path / "imgs", per_class=2)
    paths = sorted((root / "train").rglob("*.jpg"))
    spec = ImageSpec(size=(16, 16))
    clock = iter(range(0, 1000, 4))  # 4 s per reading of the clock
    monkeypatch.setattr(files, "_clock", lambda: next(clock))
    monkeypatch.setattr(files, "PROGRESS_EVERY_S", 10.0)
    pixels = files.decode_files(paths, spec, "mine", num_workers=workers)
    assert pixels.shape == (6, 3, 16, 16)
    lines = capsys.readouterr().err.splitlines()
    # readings at 0 (start), 4, 8, 12 (line after 3 images), 16, 20, 24 (after 6: the end, quiet)
    assert lines == ["mine: decoded 3/6 images (50%), 12 s, about 12 s left"]
    capsys.readouterr()
    monkeypatch.setattr(files, "PROGRESS_EVERY_S", 1000.0)
    files.decode_files(paths, spec, "mine", num_workers=workers)
    assert capsys.readouterr().err == ""  # a short decode says nothing
