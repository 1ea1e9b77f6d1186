"""Batched augmentation and normalisation (chanloss.data.augment)."""

import pytest
import torch

from chanloss.data import (
    build_augmentation,
)


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
