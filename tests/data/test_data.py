"""Data sets and augmentation (chanloss.data)."""

import numpy as np
import pytest
import torch

from chanloss.data import (
    DATASETS,
    TensorImageDataset,
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
