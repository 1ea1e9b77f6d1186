"""The CIFAR-10/100 loaders read python pickles (chanloss.data.cifar10, cifar100, cifar_pickle)."""

import pickle

import numpy as np
import pytest
import torch

from chanloss.data import (
    DatasetError,
    DatasetFileNotFoundError,
    build_datasets,
)


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
