"""Data sets and augmentation (chanloss.data)."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from chanloss.data import (
    DATASETS,
    DatasetError,
    DatasetFileNotFoundError,
    TensorImageDataset,
    build_augmentation,
    build_datasets,
    channel_stats,
    make_finegrained,
    to_float_images,
)
from chanloss.data import base as data_base
from chanloss.data.synthetic import render, sample_params


def _rows(images):
    """Images as a sorted list of byte strings (a multiset of rows)."""
    return sorted(bytes(row.numpy().tobytes()) for row in images.flatten(1))


# ---------------------------------------------------------------- digits, mnist5k, splits


def test_registry_names():
    assert set(DATASETS) == {
        "digits",
        "mnist5k",
        "finegrained",
        "cifar10",
        "cifar100",
        "cub200",
        "image_folder",
    }


def test_digits_has_a_fixed_stratified_split():
    from sklearn.datasets import load_digits

    ref = load_digits()
    bundle = build_datasets("digits", seed=3)
    assert (len(bundle.train), len(bundle.test)) == (1437, 360) and bundle.val is None
    assert bundle.image_size == (8, 8) and bundle.in_channels == 1 and bundle.num_classes == 10
    assert bundle.class_names == [str(i) for i in range(10)]
    # the union of the splits is sklearn's data divided by 16
    union = torch.cat([bundle.train.images, bundle.test.images])
    full = torch.from_numpy(ref.images.reshape(-1, 1, 8, 8).astype(np.float32)) / 16
    assert _rows(union) == _rows(full)
    assert union.min() == 0 and union.max() == 1
    totals = np.bincount(ref.target, minlength=10)
    test_counts = np.bincount(bundle.test.labels.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * totals) <= 1)
    other = build_datasets("digits", seed=11)
    assert torch.equal(other.test.images, bundle.test.images)
    assert torch.equal(other.train.labels, bundle.train.labels)


def test_mnist5k_has_a_fixed_stratified_split():
    bundle = build_datasets("mnist5k")
    assert (len(bundle.train), len(bundle.test)) == (4000, 1000)
    assert bundle.image_size == (28, 28) and bundle.in_channels == 1
    assert np.bincount(bundle.test.labels.numpy()).tolist() == [100] * 10
    assert np.bincount(bundle.train.labels.numpy()).tolist() == [400] * 10
    assert bundle.train.images.dtype == torch.float32
    assert bundle.train.images.min() >= 0 and bundle.train.images.max() == 1
    again = build_datasets("mnist5k", seed=5)
    assert torch.equal(again.test.images, bundle.test.images)


def test_validation_split_is_stratified_seeded_and_carved_from_train():
    full = build_datasets("digits")
    bundle = build_datasets("digits", seed=1, val_fraction=0.25)
    assert len(bundle.train) + len(bundle.val) == len(full.train)
    assert _rows(torch.cat([bundle.train.images, bundle.val.images])) == _rows(full.train.images)
    assert torch.equal(bundle.test.images, full.test.images)
    per_class = np.bincount(full.train.labels.numpy())
    val_counts = np.bincount(bundle.val.labels.numpy(), minlength=10)
    assert np.all(np.abs(val_counts - 0.25 * per_class) <= 1)
    same = build_datasets("digits", seed=1, val_fraction=0.25)
    other = build_datasets("digits", seed=2, val_fraction=0.25)
    assert torch.equal(same.val.images, bundle.val.images)
    assert not torch.equal(other.val.images, bundle.val.images)
    # statistics come from the final train split
    x = bundle.train.images.double()
    assert bundle.mean[0] == pytest.approx(x.mean().item(), abs=1e-9)
    assert bundle.std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-9)


def test_tensor_dataset_items_and_validation():
    ds = TensorImageDataset(torch.rand(4, 2, 3, 3), torch.tensor([0, 1, 1, 0]))
    image, label = ds[2]
    assert torch.equal(image, ds.images[2]) and label == 1 and isinstance(label, int)
    assert len(ds.subset([3, 0])) == 2 and torch.equal(ds.subset([3]).images[0], ds.images[3])
    expected = r"images must be a float32 \(in \[0, 1\]\) or uint8 \(0..255\) tensor \(N, C, H, W\)"
    with pytest.raises(ValueError, match=expected + r", got \(4, 3, 3\) torch.float32"):
        TensorImageDataset(torch.rand(4, 3, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=expected + r", got \(4, 1, 3, 3\) torch.int16"):
        TensorImageDataset(torch.zeros(4, 1, 3, 3, dtype=torch.int16), torch.zeros(4).long())
    with pytest.raises(ValueError, match=expected + r", got \(4, 1, 3, 3\) torch.float64"):
        TensorImageDataset(torch.rand(4, 1, 3, 3, dtype=torch.float64), torch.zeros(4).long())
    with pytest.raises(ValueError, match="labels must be an int64 tensor"):
        TensorImageDataset(torch.rand(4, 1, 3, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="got 4 images and 3 labels"):
        TensorImageDataset(torch.rand(4, 1, 3, 3), torch.zeros(3, dtype=torch.long))


def test_to_float_images_scales_uint8_and_passes_floats_through():
    every = torch.arange(256, dtype=torch.uint8).view(4, 1, 8, 8)
    out = to_float_images(every)
    reference = [np.float32(v) / np.float32(255) for v in range(256)]
    assert out.dtype == torch.float32 and out.shape == (4, 1, 8, 8)
    assert out.flatten().tolist() == reference and out[0, 0, 0, 0] == 0 and out.max() == 1
    for x in (torch.rand(2, 3, 4, 4), torch.rand(3, 2, dtype=torch.float64)):
        assert to_float_images(x) is x
    with pytest.raises(
        ValueError,
        match=r"images must be uint8 \(0..255\) or floating point \(in \[0, 1\]\), got torch.int64",
    ):
        to_float_images(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="images must be a tensor, got ndarray"):
        to_float_images(np.zeros((2, 2), np.uint8))


def test_uint8_tensor_dataset_gives_float_items_and_keeps_its_dtype():
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (5, 3, 4, 6), dtype=torch.uint8, generator=g)
    labels = torch.tensor([0, 2, 1, 1, 0])
    ds = TensorImageDataset(pixels, labels)
    reference = pixels.numpy().astype(np.float32) / np.float32(255)
    for i in range(5):
        image, label = ds[i]
        assert image.dtype == torch.float32 and torch.equal(image, torch.from_numpy(reference[i]))
        assert label == labels[i].item() and isinstance(label, int)
    part = ds.subset([4, 1])
    assert part.images.dtype == torch.uint8 and torch.equal(part.images, pixels[[4, 1]])
    assert torch.equal(part[1][0], ds[1][0]) and part.labels.tolist() == [0, 2]


def test_channel_stats_of_uint8_equal_the_float_computation(monkeypatch):
    g = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (37, 3, 5, 7), dtype=torch.uint8, generator=g)
    pixels[:, 1] //= 4  # channels with different statistics
    as_float = pixels.float() / 255
    mean, std = channel_stats(pixels)
    x = as_float.double()
    for ch in range(3):
        assert mean[ch] == pytest.approx(x[:, ch].mean().item(), rel=1e-12, abs=1e-15)
        assert std[ch] == pytest.approx(x[:, ch].std(unbiased=False).item(), rel=1e-9)
    assert (mean, std) == channel_stats(as_float)  # the float set gives the same numbers
    assert mean[1] < 0.3 < mean[0]
    # uint8 sets are read chunk by chunk, never converted whole
    blocks = []

    def spy(images):
        blocks.append((images.dtype, images.shape[0]))
        return to_float_images(images)

    monkeypatch.setattr(data_base, "to_float_images", spy)
    for chunk in (1, 10, 37, 100):
        blocks.clear()
        m, sd = channel_stats(pixels, chunk=chunk)
        assert [n for _, n in blocks] == [min(chunk, 37 - s) for s in range(0, 37, chunk)]
        assert all(dtype == torch.uint8 for dtype, _ in blocks)
        assert m == pytest.approx(mean, rel=1e-12) and sd == pytest.approx(std, rel=1e-9)
    # by default about 2**22 values per chunk: 5 images of 3 x 512 x 512
    blocks.clear()
    big = torch.full((1, 3, 512, 512), 51, dtype=torch.uint8).expand(12, -1, -1, -1)
    m, sd = channel_stats(big)
    assert [n for _, n in blocks] == [5, 5, 2]
    assert m == pytest.approx((0.2,) * 3, rel=1e-7) and sd == pytest.approx((0.0,) * 3, abs=1e-6)
    with pytest.raises(ValueError, match=r"chunk must be in \[1, inf\), got 0"):
        channel_stats(pixels, chunk=0)


def test_build_datasets_rejects_bad_names_and_options():
    with pytest.raises(
        ValueError, match="unknown dataset 'svhn'; expected one of cifar10, cifar100"
    ):
        build_datasets("svhn")
    with pytest.raises(ValueError, match="dataset 'digits' has no option 'image_size'"):
        build_datasets("digits", image_size=16)
    with pytest.raises(
        ValueError,
        match="dataset 'finegrained' has no option 'seeds'; allowed options: num_classes",
    ):
        build_datasets("finegrained", seeds=1)
    with pytest.raises(ValueError, match=r"val_fraction must be a finite number in \[0, 0.99\]"):
        build_datasets("digits", val_fraction=1.0)
    with pytest.raises(ValueError, match="dataset 'cifar10' needs root=<directory holding"):
        build_datasets("cifar10")


# ---------------------------------------------------------------- CIFAR pickles


def _write_pickle(path, obj):
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _cifar10_tree(root, per_batch=3):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        _write_pickle(
            base / name, {b"batch_label": name.encode(), b"data": data, b"labels": labels}
        )
        batches[name] = (data, labels)
    names = [f"class{i}".encode() for i in range(10)]
    _write_pickle(base / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return base, batches


def test_cifar10_pickles_load(tmp_path):
    base, batches = _cifar10_tree(tmp_path)
    for root in (tmp_path, base):
        bundle = build_datasets("cifar10", root=str(root))
        assert (len(bundle.train), len(bundle.test)) == (15, 3)
        assert bundle.class_names == [f"class{i}" for i in range(10)]
        assert bundle.image_size == (32, 32) and bundle.num_classes == 10
    data, labels = batches["data_batch_2"]
    image, label = bundle.train[3 + 1]  # second image of the second batch
    n = 1
    for c, h, w in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        assert image[c, h, w].item() == pytest.approx(data[n, c * 1024 + h * 32 + w] / 255)
    assert label == labels[n]
    assert torch.equal(bundle.test.labels, torch.tensor(batches["test_batch"][1]))
    # stored as the pickled bytes; items are those bytes / 255 in float32
    expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert bundle.train.images.dtype == torch.uint8 and bundle.train.images.is_contiguous()
    assert torch.equal(bundle.train.images, torch.from_numpy(expected).view(15, 3, 32, 32))
    assert torch.equal(bundle.test.images.flatten(1), torch.from_numpy(batches["test_batch"][0]))
    reference = expected.reshape(15, 3, 32, 32).astype(np.float32) / np.float32(255)
    for i in range(15):
        image, _ = bundle.train[i]
        assert image.dtype == torch.float32 and torch.equal(image, torch.from_numpy(reference[i]))


def test_cifar100_pickles_load_fine_labels(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    data = np.arange(4 * 3072, dtype=np.int64).reshape(4, 3072) % 256
    fine = [0, 99, 50, 7]
    for name in ("train", "test"):
        _write_pickle(
            base / name,
            {b"data": data.astype(np.uint8), b"fine_labels": fine, b"coarse_labels": [0, 1, 2, 3]},
        )
    _write_pickle(base / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    bundle = build_datasets("cifar100", root=tmp_path)
    assert bundle.num_classes == 100 and bundle.class_names[99] == "f99"
    assert bundle.train.labels.tolist() == fine
    assert bundle.test.images.dtype == torch.uint8
    assert bundle.test.images[1, 2, 3, 4].item() == (3072 + 2048 + 3 * 32 + 4) % 256
    assert bundle.test[1][0][2, 3, 4].item() == pytest.approx(
        (3072 + 2048 + 3 * 32 + 4) % 256 / 255
    )


def test_cifar_missing_and_malformed_files_name_the_file(tmp_path):
    base, _ = _cifar10_tree(tmp_path)
    (base / "test_batch").unlink()
    with pytest.raises(DatasetFileNotFoundError, match=r"cifar10: .*test_batch: file not found"):
        build_datasets("cifar10", root=tmp_path)
    assert issubclass(DatasetFileNotFoundError, FileNotFoundError)
    assert issubclass(DatasetFileNotFoundError, ValueError)
    _write_pickle(
        base / "test_batch", {b"images": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    )
    with pytest.raises(
        DatasetError,
        match=r"test_batch: expected keys b'data', b'labels', got \[b'images', b'labels'\]",
    ):
        build_datasets("cifar10", root=tmp_path)
    (base / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="test_batch: cannot unpickle"):
        build_datasets("cifar10", root=tmp_path)
    _write_pickle(base / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DatasetError, match=r"test_batch: expected b'data' of shape \(N, 3072\)"):
        build_datasets("cifar10", root=tmp_path)
    _write_pickle(base / "test_batch", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(
        DatasetError, match=r"test_batch: labels must be in \[0, 10\), got \[0, 10\]"
    ):
        build_datasets("cifar10", root=tmp_path)
    with pytest.raises(DatasetFileNotFoundError, match="cifar-100-python/train not found"):
        build_datasets("cifar100", root=tmp_path)


# ---------------------------------------------------------------- CUB-200-2011


def _three_band_png(path, size=(60, 30)):
    """Left quarter red, middle half green, right quarter blue (width, height)."""
    w, h = size
    array = np.zeros((h, w, 3), np.uint8)
    array[:, : w // 4, 0] = 255
    array[:, w // 4 : 3 * w // 4, 1] = 255
    array[:, 3 * w // 4 :, 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _cub_tree(root):
    base = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split = [], [], []
    for i in range(6):
        class_id = i % 3 + 1
        rel = f"{classes[class_id - 1]}/img_{i}.png"
        _three_band_png(base / "images" / rel, size=(60 + 4 * i, 30))
        images.append(f"{i + 1} {rel}")
        labels.append(f"{i + 1} {class_id}")
        split.append(f"{i + 1} {1 if i < 4 else 0}")
    (base / "classes.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return base


def test_cub200_tree_loads_with_crop_and_stretch(tmp_path):
    base = _cub_tree(tmp_path)
    for root in (tmp_path, base):
        bundle = build_datasets("cub200", root=root, image_size=16, num_workers=2)
        assert (len(bundle.train), len(bundle.test)) == (4, 2)
        assert bundle.train.labels.tolist() == [0, 1, 2, 0] and bundle.test.labels.tolist() == [
            1,
            2,
        ]
        assert bundle.class_names[1] == "002.Laysan_Albatross" and bundle.num_classes == 3
        assert bundle.image_size == (16, 16) and bundle.in_channels == 3
    assert bundle.train.images.dtype == torch.uint8 and bundle.test.images.dtype == torch.uint8
    crop = bundle.train[0][0]  # 60x30 -> 32x16 -> centre 16x16: the green half only
    assert crop[1, :, 1:-1].min() > 0.99 and crop[0].max() < 0.2 and crop[2].max() < 0.2
    stretched = build_datasets("cub200", root=base, image_size=(8, 16), resize_mode="stretch")
    image = stretched.train[0][0]
    assert image.shape == (3, 8, 16)
    assert image[0, :, 0].min() > 0.9 and image[2, :, -1].min() > 0.9 and image[1, :, 8].min() > 0.9
    # every item is the float image of a plain Pillow decode + resize of its file
    files = [
        base / "images" / line.split()[1]
        for line in (base / "images.txt").read_text().split("\n")
        if line
    ]
    for split, ids in ((stretched.train, [0, 1, 2, 3]), (stretched.test, [4, 5])):
        for i, file_index in enumerate(ids):
            assert torch.equal(split[i][0], _pillow_reference(files[file_index], (8, 16)))


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        (
            "train_test_split.txt",
            "1 1\n2 1\n3 x\n",
            r"CUB_200_2011/train_test_split.txt: line 3: expected '<image_id> <0\|1>', got '3 x'",
        ),
        (
            "train_test_split.txt",
            "1 1\n2 2\n",
            r"train_test_split.txt: line 2: expected '<image_id> <0\|1>', got '2 2'",
        ),
        (
            "image_class_labels.txt",
            "1 1\n2\n",
            r"image_class_labels.txt: line 2: expected '<image_id> <class_id>', got '2'",
        ),
        ("image_class_labels.txt", "1 1\n1 2\n", "image_class_labels.txt: id 1 appears twice"),
        (
            "image_class_labels.txt",
            "1 1\n2 1\n3 1\n4 1\n5 1\n6 9\n",
            r"image id 6 has class id 9, expected 1..3",
        ),
        (
            "train_test_split.txt",
            "1 1\n2 1\n3 1\n4 1\n5 0\n",
            r"train_test_split.txt: no entry for image id 6 \(listed in .*images.txt\)",
        ),
        (
            "classes.txt",
            "",
            r"classes.txt: no records \(expected lines '<class_id> <class_name>'\)",
        ),
        ("classes.txt", "1 a\n3 b\n", r"classes.txt: expected class ids 1..2, got \[1, 3\]"),
    ],
)
def test_cub200_malformed_index_files_name_the_file_and_line(tmp_path, file, content, message):
    base = _cub_tree(tmp_path)
    (base / file).write_text(content)
    with pytest.raises(DatasetError, match=message):
        build_datasets("cub200", root=tmp_path, image_size=8)


def test_cub200_missing_files_and_bad_images_name_the_file(tmp_path):
    base = _cub_tree(tmp_path)
    (base / "train_test_split.txt").unlink()
    with pytest.raises(
        DatasetFileNotFoundError,
        match=r"CUB_200_2011/train_test_split.txt: file not found \(expected lines '<image_id> <0\|1>'\)",
    ):
        build_datasets("cub200", root=tmp_path, image_size=8)
    _cub_tree(tmp_path / "b")
    image = tmp_path / "b/CUB_200_2011/images/002.Laysan_Albatross/img_1.png"
    image.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"cub200: cannot read image .*img_1.png"):
        build_datasets("cub200", root=tmp_path / "b", image_size=8, num_workers=0)
    image.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=r"cub200: cannot read image .*img_1.png"):
        build_datasets("cub200", root=tmp_path / "b", image_size=8, num_workers=3)
    image.unlink()
    with pytest.raises(DatasetFileNotFoundError, match=r"image file not found: .*img_1.png"):
        build_datasets("cub200", root=tmp_path / "b", image_size=8)
    with pytest.raises(DatasetFileNotFoundError, match=r"CUB_200_2011/images.txt not found"):
        build_datasets("cub200", root=tmp_path / "b" / "CUB_200_2011" / "images")
    with pytest.raises(ValueError, match="resize_mode must be one of 'crop', 'stretch'"):
        build_datasets("cub200", root=tmp_path, resize_mode="pad")


# ---------------------------------------------------------------- image folders


def _folder_tree(root):
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255), "bird": (0, 255, 0)}
    for split, counts in (
        ("train", {"cat": 2, "dog": 3, "bird": 1}),
        ("test", {"dog": 1, "cat": 1}),
    ):
        for name, count in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                ext = ".png" if i % 2 == 0 else ".JPG"
                Image.new("RGB", (12 + i, 10), colours[name]).save(folder / f"{i}{ext}")
            (folder / "notes.txt").write_text("ignored")


def test_image_folder_loads_sorted_classes(tmp_path):
    _folder_tree(tmp_path)
    bundle = build_datasets("image_folder", root=tmp_path, image_size=8)
    assert bundle.class_names == ["bird", "cat", "dog"]
    assert bundle.train.labels.tolist() == [0, 1, 1, 2, 2, 2]
    assert bundle.test.labels.tolist() == [1, 2]
    assert bundle.train.images.shape == (6, 3, 8, 8) and bundle.train.images.dtype == torch.uint8
    # dog images are blue, bird images green (JPEG: approximately)
    assert bundle.train[5][0][2].min() > 0.9 and bundle.train[0][0][1].min() > 0.9
    grey = build_datasets(
        "image_folder", root=tmp_path, image_size=(4, 6), colour="L", resize_mode="stretch"
    )
    assert grey.in_channels == 1 and grey.image_size == (4, 6)
    assert grey.test.images.dtype == torch.uint8 and grey.test.images.shape == (2, 1, 4, 6)
    files = [tmp_path / "test" / "cat" / "0.png", tmp_path / "test" / "dog" / "0.png"]
    for i, file in enumerate(files):
        assert torch.equal(grey.test[i][0], _pillow_reference(file, (4, 6), "L"))


def _pillow_reference(path, size, colour="RGB"):
    """The float32 (C, H, W) image in [0, 1] of a file stretched to ``size`` by Pillow."""
    with Image.open(path) as image:
        array = np.array(image.convert(colour).resize(size[::-1], Image.Resampling.BILINEAR))
    array = array.reshape(size[0], size[1], -1).transpose(2, 0, 1).astype(np.float32)
    return torch.from_numpy(array / np.float32(255))


def test_image_folder_errors_name_the_file(tmp_path):
    _folder_tree(tmp_path)
    bad = tmp_path / "train" / "cat" / "1.JPG"
    bad.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"image_folder: cannot read image .*cat/1.JPG"):
        build_datasets("image_folder", root=tmp_path, image_size=8)
    bad.unlink()
    (tmp_path / "test" / "fish").mkdir()
    with pytest.raises(DatasetError, match=r"class directory .*test/fish holds no image files"):
        build_datasets("image_folder", root=tmp_path, image_size=8)
    Image.new("RGB", (4, 4)).save(tmp_path / "test" / "fish" / "a.png")
    with pytest.raises(DatasetError, match=r"class 'fish' is not among the train classes"):
        build_datasets("image_folder", root=tmp_path, image_size=8)
    with pytest.raises(DatasetFileNotFoundError, match=r"nowhere.*is not a directory"):
        build_datasets("image_folder", root=tmp_path / "nowhere")
    with pytest.raises(DatasetFileNotFoundError, match=r"image_folder: .*train not found"):
        build_datasets("image_folder", root=tmp_path / "test")


# ---------------------------------------------------------------- augmentation


def test_train_augmentation_crops_flips_and_normalises():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    aug = build_augmentation(train=True, mean=mean, std=std, crop_padding=2, hflip=True)
    torch.manual_seed(1)
    out = aug(x)
    assert out.shape == x.shape
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):  # every output is a normalised, possibly flipped, window of the padded input
        raw = out[i] * s + m
        windows = [
            w
            for dy in range(5)
            for dx in range(5)
            for w in (padded[i, :, dy : dy + 8, dx : dx + 8],)
            for w in (w, w.flip(-1))
        ]
        assert min((raw - w).abs().max().item() for w in windows) < 1e-5
    torch.manual_seed(1)
    assert torch.equal(aug(x), out)
    torch.manual_seed(2)
    assert not torch.equal(aug(x), out)


def test_eval_augmentation_is_resize_and_normalise_only():
    x = torch.rand(4, 3, 8, 8)
    aug = build_augmentation(
        train=False, mean=(0.5,) * 3, std=(0.25,) * 3, crop_padding=4, hflip=True
    )
    torch.manual_seed(0)
    a = aug(x)
    torch.manual_seed(1)
    torch.testing.assert_close(aug(x), a)
    torch.testing.assert_close(a, (x - 0.5) / 0.25)
    resized = build_augmentation(train=False, mean=(0.0,) * 3, std=(1.0,) * 3, resize=(16, 12))
    assert resized(x).shape == (4, 3, 16, 12)
    const = torch.full((1, 3, 8, 8), 0.3)
    torch.testing.assert_close(resized(const), torch.full((1, 3, 16, 12), 0.3))
    train_resized = build_augmentation(
        train=True, mean=(0.0,) * 3, std=(1.0,) * 3, crop_padding=1, resize=6
    )
    assert train_resized(x).shape == (4, 3, 6, 6)


def test_augmentation_moves_its_statistics_with_the_module():
    aug = build_augmentation(train=False, mean=(0.5,), std=(2.0,)).double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    out = aug(x)
    assert out.dtype == torch.float64 and aug.mean.dtype == torch.float64
    torch.testing.assert_close(out, (x - 0.5) / 2.0)


def test_augmentation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="one value per channel, got 3 and 1"):
        build_augmentation(train=True, mean=(0.1, 0.2, 0.3), std=(1.0,))
    with pytest.raises(
        ValueError, match=r"std\[0\] must be a finite number in \(0, inf\), got 0.0"
    ):
        build_augmentation(train=True, mean=(0.1,), std=(0.0,))
    with pytest.raises(ValueError, match=r"crop_padding must be in \[0, inf\), got -1"):
        build_augmentation(train=True, mean=(0.1,), std=(1.0,), crop_padding=-1)
    aug = build_augmentation(train=True, mean=(0.1,), std=(1.0,))
    with pytest.raises(
        ValueError, match=r"built for 1 channels \(mean/std\), got a batch of shape \(2, 3, 4, 4\)"
    ):
        aug(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="expects a float"):
        aug(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))


# ---------------------------------------------------------------- synthetic fine-grained set


def test_finegrained_is_deterministic_balanced_and_seeded():
    opts = dict(num_classes=6, train_per_class=5, test_per_class=3, image_size=24)
    a = make_finegrained(seed=4, **opts)
    b = make_finegrained(seed=4, **opts)
    c = make_finegrained(seed=5, **opts)
    torch.manual_seed(123)  # the global RNG plays no part
    d = make_finegrained(seed=4, **opts)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_images, d.test_images)
    assert not torch.equal(a.train_images, c.train_images)
    assert a.train_images.shape == (30, 3, 24, 24) and a.test_images.shape == (18, 3, 24, 24)
    assert np.bincount(a.train_labels.numpy()).tolist() == [5] * 6
    assert np.bincount(a.test_labels.numpy()).tolist() == [3] * 6
    assert a.train_images.min() >= 0 and a.train_images.max() <= 1
    assert a.class_names[:5] == [
        "red-disk@head",
        "red-disk@back",
        "red-disk@tail",
        "red-disk@belly",
        "blue-disk@head",
    ]
    bundle = build_datasets("finegrained", data_seed=4, val_fraction=0.2, seed=0, **opts)
    assert bundle.num_classes == 6 and len(bundle.val) == 6 and bundle.in_channels == 3
    assert torch.equal(bundle.test.images, a.test_images)


def test_finegrained_classes_differ_only_in_a_small_local_marking():
    """Same nuisance, another class: the images differ in a few pixels, and clearly there."""
    g = torch.Generator().manual_seed(0)
    num_classes, draws = 16, 6
    params = sample_params(torch.zeros(draws, dtype=torch.long), 32, 0.5, g)
    params = {k: v.repeat_interleave(num_classes, 0) for k, v in params.items()}
    params["label"] = torch.arange(num_classes).repeat(draws)
    images = render(params, 32, 4).view(draws, num_classes, 3, 32, 32)
    diff = (images.unsqueeze(1) - images.unsqueeze(2)).abs().amax(3)  # (draws, K, K, H, W)
    off_diagonal = ~torch.eye(num_classes, dtype=torch.bool)
    changed = (diff > 0.02).flatten(3).float().mean(3)[:, off_diagonal]
    strongest = diff.flatten(3).amax(3)[:, off_diagonal]
    # every pair of classes is told apart by its marking, by more than 3 sd of pixel noise
    assert strongest.min() > 0.15
    assert changed.max() < 0.12  # ... which covers a small part of the image


def test_finegrained_class_means_differ_from_the_global_mean_locally():
    data = make_finegrained(train_per_class=300, test_per_class=1, difficulty=0.0, seed=0)
    x, y = data.train_images, data.train_labels
    means = torch.stack([x[y == k].mean(0) for k in range(10)])
    deviation = (means - x.mean(0)).abs().amax(1).flatten(1)
    halves = torch.stack([x[y == k][:150].mean(0) - x[y == k][150:].mean(0) for k in range(10)])
    noise = (halves.abs().amax(1) / 2).square().mean().sqrt()  # sampling noise of a class mean
    significant = (deviation > 4 * noise).float().mean(1)
    assert deviation.amax(1).min() > 3 * halves.abs().max() / 2
    assert significant.min() > 0 and significant.max() < 0.15


def test_finegrained_rejects_bad_options():
    with pytest.raises(ValueError, match=r"num_classes must be in \[2, 64\], got 65"):
        make_finegrained(num_classes=65)
    with pytest.raises(ValueError, match=r"difficulty must be a finite number in \[0, 1\]"):
        make_finegrained(difficulty=1.5)
    with pytest.raises(ValueError, match=r"num_locations must be in \[1, 8\]"):
        make_finegrained(num_locations=9)
