"""The trainer on tiny digits runs: losses and accuracy (a margin head's logits, the weighted
objective), uint8 data, AMP and channels_last, the learning-rate schedule and parameter groups,
a missing tensorboard, divergence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from training_helpers import registered_test_losses, tiny

from chanloss.config import ConfigError
from chanloss.data import TensorImageDataset, build_datasets, channel_stats, to_float_images
from chanloss.losses import LOSSES, create_loss
from chanloss.models import create_model
from chanloss.run.optim import build_optimizer, build_scheduler, lr_factor
from chanloss.run.session import train
from chanloss.run.trainer import Trainer


@pytest.fixture
def test_losses():
    with registered_test_losses():
        yield


# -- losses, accuracy, schedule ----------------------------------------------------------------
def test_a_provides_logits_loss_replaces_the_classifier_for_accuracy(tmp_path, test_losses):
    summary = train(
        tiny(losses=[{"name": "ce"}, {"name": "test_class_three"}]), tmp_path / "run", verbose=0
    )
    labels = build_datasets("digits").test.labels
    assert summary["final_test_acc"] == pytest.approx((labels == 3).float().mean().item())
    assert summary["loss_params"] == 1


@pytest.mark.skipif("arcface" not in LOSSES, reason="arcface is not registered")
def test_arcface_head_gives_the_accuracy(tmp_path):
    trainer = Trainer(tiny("epochs=3", losses=[{"name": "arcface"}]), tmp_path / "run", verbose=0)
    assert trainer.logit_slot is trainer.slots[0]
    head = trainer.slots[0].loss
    summary = trainer.fit()
    bundle = trainer.data
    trainer.model.eval()
    head.eval()
    with torch.no_grad():
        out = trainer.model(trainer.eval_aug(to_float_images(bundle.test.images)))
        expected = (head.logits(out.embedding).argmax(1) == bundle.test.labels).float().mean()
        own = (out.logits.argmax(1) == bundle.test.labels).float().mean()
    assert summary["final_test_acc"] == pytest.approx(expected.item(), abs=1e-6)
    assert summary["loss_params"] == 10 * trainer.model.embedding_dim
    assert expected.item() > own.item() + 0.2  # the untrained classifier is not what is measured


def test_the_objective_is_the_weighted_sum_of_the_losses(tmp_path):
    trainer = Trainer(
        tiny(losses=[{"name": "ce", "weight": 2.0}, {"name": "cc", "weight": 0.5}]),
        tmp_path / "run",
        verbose=0,
    )
    assert [s.takes_generator for s in trainer.slots] == [False, False]
    assert trainer.columns == ["ce", "cc"]
    row = trainer.train_epoch(0)
    inner = trainer.slots[1].loss.weights["cc"]  # CC-Loss's own term weight (default 0.01)
    assert row["train_loss"] == pytest.approx(2.0 * row["ce"] + 0.5 * inner * row["cc"], rel=1e-5)
    if "mc" in LOSSES:
        mc = Trainer(tiny(losses=[{"name": "ce"}, {"name": "mc"}]), tmp_path / "mc", verbose=0)
        assert [s.takes_generator for s in mc.slots] == [False, True]
        assert mc.columns == ["ce", "mc_dis", "mc_div"]


def quantised_digits(config, *, uint8: bool):
    """The digits splits rounded to 8 bits: uint8 0..255, or the same values as float32 / 255."""
    bundle = build_datasets("digits", seed=config.seed)
    for split in ("train", "test"):
        ds = getattr(bundle, split)
        pixels = (ds.images * 255).round().to(torch.uint8)
        images = pixels if uint8 else pixels.numpy().astype(np.float32) / np.float32(255)
        setattr(bundle, split, TensorImageDataset(torch.as_tensor(images), ds.labels))
    bundle.mean, bundle.std = channel_stats(bundle.train.images)
    return bundle


def test_a_uint8_data_set_trains_exactly_like_its_float_copy(tmp_path, monkeypatch):
    import chanloss.run.build as trainer_module  # where the run is built

    build_data = trainer_module.build_data
    seen = {}
    for uint8 in (True, False):
        monkeypatch.setattr(
            trainer_module, "build_data", lambda config, u=uint8: quantised_digits(config, uint8=u)
        )
        trainer = Trainer(tiny(), tmp_path / str(uint8), verbose=0)
        assert trainer.data.train.images.dtype == (torch.uint8 if uint8 else torch.float32)
        batches = list(trainer.train_batches.epoch(3)) + list(trainer.eval_batches["test"].epoch())
        seen[uint8] = (trainer.data, batches, trainer.train_epoch(0))
    monkeypatch.setattr(trainer_module, "build_data", build_data)
    (data8, batches8, row8), (data32, batches32, row32) = seen[True], seen[False]
    assert (data8.mean, data8.std) == (data32.mean, data32.std)
    assert len(batches8) == len(batches32) == 1437 // 128 + math.ceil(360 / 256)
    for (x8, y8), (x32, y32) in zip(batches8, batches32, strict=True):
        assert x8.dtype == torch.float32 and torch.equal(x8, x32) and torch.equal(y8, y32)
        assert x8.min() == 0 and x8.max() == 1  # scaled to [0, 1], not 0..255
    assert row8["train_loss"] == row32["train_loss"] and row8["train_acc"] == row32["train_acc"]


def test_amp_channels_last_and_adamw_run_on_cpu(tmp_path):
    config = tiny("amp=true", "channels_last=true", "optim.name=adamw", "optim.lr=0.003")
    trainer = Trainer(config, tmp_path / "run", verbose=0)
    x = to_float_images(trainer.data.train.images[:4])
    with trainer._autocast():
        assert trainer.model(trainer._prepare(x, trainer.eval_aug)).logits.dtype == torch.bfloat16
    assert not trainer.scaler.is_enabled()
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    summary = trainer.fit()
    assert math.isfinite(summary["final_train_loss"]) and summary["final_test_acc"] > 0.15


def test_lr_factor_warmup_then_schedules():
    from chanloss.config import ScheduleConfig

    spe = 10
    step = lr_factor(
        ScheduleConfig(name="step", warmup_epochs=0.5, milestones=[2, 3], gamma=0.5),
        steps_per_epoch=spe,
        epochs=4,
    )
    assert [step(s) for s in (0, 4, 5, 19, 20, 29, 30, 39)] == [
        0.2,
        1.0,
        1.0,
        1.0,
        0.5,
        0.5,
        0.25,
        0.25,
    ]
    every = lr_factor(
        ScheduleConfig(name="step", step_size=1, gamma=0.1), steps_per_epoch=spe, epochs=4
    )
    assert every(9) == 1.0 and every(10) == pytest.approx(0.1) and every(25) == pytest.approx(0.01)
    cos = lr_factor(
        ScheduleConfig(name="cosine", warmup_epochs=1), steps_per_epoch=spe, epochs=3, floor=0.1
    )
    for s in range(10, 30):
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 20))
        assert cos(s) == pytest.approx(expected)
    assert [cos(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    const = lr_factor(ScheduleConfig(name="constant"), steps_per_epoch=spe, epochs=3)
    assert {const(s) for s in range(30)} == {1.0}


def test_each_loss_with_parameters_gets_its_own_group_and_lr():
    config = tiny(
        "schedule.name=cosine",
        "schedule.min_lr=0.005",
        losses=[{"name": "ce"}, {"name": "cc", "placement": "branch", "reduction": 4, "lr": 0.01}],
    )
    model = create_model(
        "convnet_small", num_classes=10, in_channels=1, width=4, feature_channels=20
    )
    cc = create_loss("cc", context={"num_channels": 20}, placement="branch", reduction=4)
    ce = create_loss("ce")
    opt = build_optimizer(config.optim, model, [ce, cc], [None, 0.01])
    assert [g["lr"] for g in opt.param_groups] == [0.05, 0.01]
    assert len(opt.param_groups[1]["params"]) == 4
    sched = build_scheduler(config.schedule, opt, steps_per_epoch=5, epochs=2)
    for _ in range(10):
        opt.step()
        sched.step()
    # both groups end at min_lr
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.005, 0.005])


def test_missing_tensorboard_is_reported_and_skipped(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    train(tiny("tensorboard=true"), tmp_path / "run", verbose=0)
    assert "tensorboard is not installed; skipping TensorBoard logging" in capsys.readouterr().out
    assert (tmp_path / "run" / "summary.json").exists()


def test_divergence_is_a_clear_error(tmp_path):
    with pytest.raises(
        ConfigError, match=r"training diverged in epoch 1 \(loss nan\); lower optim.lr"
    ):
        train(tiny("optim.lr=1e30", "optim.momentum=0.0"), tmp_path / "run", verbose=0)
