"""The trainer on tiny digits runs: run files, exact resume, best/last, eval, compare, AMP."""

from __future__ import annotations

import copy
import csv
import filecmp
import json
import math
import random
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_config import TINY
from torch import Tensor

from chanloss.analysis.evaluate import evaluate_checkpoint
from chanloss.config import ConfigError, load_config
from chanloss.data import TensorImageDataset, build_datasets, channel_stats, to_float_images
from chanloss.experiments.comparison import compare
from chanloss.losses import LOSSES, Loss, create_loss
from chanloss.losses.registry import register_loss
from chanloss.models import create_model
from chanloss.run.checkpoint import (
    CheckpointError,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from chanloss.run.optim import build_optimizer, build_scheduler, lr_factor
from chanloss.run.session import train
from chanloss.run.trainer import Trainer


def tiny(*overrides: str, **changes: object) -> object:
    raw = copy.deepcopy(TINY)
    raw.update(copy.deepcopy(changes))
    return load_config(raw=raw, overrides=list(overrides))


class RandomDropLoss(Loss):
    """Test-only loss that draws from the trainer's generator (like MC-Loss's channel mask):
    the mean square of the features with a random half of the channels dropped."""

    consumes = "features"

    def __init__(self, *, weight: float = 1.0) -> None:
        super().__init__(weights={"drop": weight})

    def validate(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return inputs, labels

    def terms(self, inputs, labels, *, generator=None):  # noqa: D102
        return super().terms(inputs, labels, generator=generator)

    def compute_terms(self, inputs, labels, *, generator=None):
        assert generator is not None and generator.device == inputs.device
        keep = torch.rand(inputs.shape[1], generator=generator, device=inputs.device) < 0.5
        return {"drop": 1e-3 * (inputs * keep.view(1, -1, 1, 1)).square().mean()}


class ClassThreeLoss(Loss):
    """Test-only 'margin head': its logits() always say class 3."""

    consumes = "embedding"
    provides_logits = True

    def __init__(self, *, num_classes: int) -> None:
        super().__init__(weights={"zero": 1.0})
        self.num_classes = num_classes
        self.scale = torch.nn.Parameter(torch.ones(()))

    def validate(self, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return inputs, labels

    def compute_terms(self, inputs, labels, **kwargs):
        return {"zero": 0.0 * self.scale * inputs.square().mean()}

    def logits(self, embedding: Tensor) -> Tensor:
        return F.one_hot(
            torch.full_like(embedding[:, 0], 3, dtype=torch.long), self.num_classes
        ).float()


@pytest.fixture
def test_losses():
    register_loss("test_random_drop")(RandomDropLoss)
    register_loss("test_class_three")(ClassThreeLoss)
    yield
    LOSSES.pop("test_random_drop")
    LOSSES.pop("test_class_three")


def read_metrics(run) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def manual_test_accuracy(run, checkpoint: str = "last.pt") -> float:
    """Accuracy of a saved model on the digits test split, recomputed without the trainer."""
    state = torch.load(run / checkpoint, weights_only=True)
    config = load_config(raw=state["config"])
    bundle = build_datasets("digits", seed=config.seed, val_fraction=config.data.val_fraction)
    model = create_model("convnet_small", num_classes=10, in_channels=1, **config.model.options())
    model.load_state_dict(state["model"])
    model.eval()
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = model((to_float_images(bundle.test.images) - mean) / std).logits
    return (logits.argmax(1) == bundle.test.labels).float().mean().item()


# -- run files ---------------------------------------------------------------------------------
def test_one_epoch_writes_the_run_files(tmp_path):
    run = tmp_path / "run"
    config = tiny()
    summary = train(config, run, verbose=0)
    for name in ("config.yaml", "metrics.csv", "summary.json", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert load_config(run / "config.yaml") == config

    rows = read_metrics(run)
    assert list(rows[0]) == [
        "epoch",
        "ce",
        "train_loss",
        "train_acc",
        "val_acc",
        "test_acc",
        "lr",
        "epoch_time",
        "samples_per_s",
    ]
    assert len(rows) == 1 and rows[0]["epoch"] == "1" and rows[0]["val_acc"] == ""
    assert float(rows[0]["ce"]) == pytest.approx(float(rows[0]["train_loss"]))
    assert float(rows[0]["lr"]) == 0.05

    assert json.loads((run / "summary.json").read_text()) == summary
    assert summary["finished"] and summary["epochs"] == 1 and summary["best_epoch"] == 1
    assert summary["best_val_acc"] is None
    assert summary["final_test_acc"] == pytest.approx(float(rows[0]["test_acc"]), rel=1e-5)
    assert summary["final_test_acc"] == pytest.approx(manual_test_accuracy(run), abs=1e-6)
    model = create_model(
        "convnet_small", num_classes=10, in_channels=1, width=4, feature_channels=20
    )
    assert summary["params"] == sum(p.numel() for p in model.parameters())

    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["global_step"] == 1437 // 128
    assert filecmp.cmp(run / "last.pt", run / "best.pt", shallow=False)  # no val split


def test_best_is_chosen_on_val_and_the_reported_accuracy_is_the_last_epochs(tmp_path):
    run = tmp_path / "run"
    summary = train(tiny("epochs=3", "data.val_fraction=0.3", "eval_every=2"), run, verbose=0)
    rows = read_metrics(run)
    assert [r["val_acc"] != "" for r in rows] == [False, True, True]
    assert [r["test_acc"] != "" for r in rows] == [False, False, True]  # test: at the end
    vals = {int(r["epoch"]): float(r["val_acc"]) for r in rows if r["val_acc"]}
    best_epoch = max(vals, key=lambda e: (vals[e], -e))
    assert summary["best_epoch"] == best_epoch
    assert summary["best_val_acc"] == pytest.approx(vals[best_epoch], rel=1e-5)  # csv: 6 digits
    assert summary["final_test_acc"] == pytest.approx(float(rows[-1]["test_acc"]), rel=1e-5)
    assert load_checkpoint(run / "best.pt")["epoch"] == best_epoch
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
    assert summary["final_test_acc"] == pytest.approx(manual_test_accuracy(run), abs=1e-6)
    assert summary["final_test_acc"] != pytest.approx(0.1, abs=0.05)  # it learned something


# -- exact resume ------------------------------------------------------------------------------
def resumable(*overrides: str) -> object:
    return tiny(
        "data.val_fraction=0.2",
        "data.augment.crop_padding=1",
        "data.augment.hflip=true",
        "schedule.warmup_epochs=1",
        "grad_clip=1.0",
        *overrides,
        losses=[
            {"name": "ce"},
            {"name": "cc", "placement": "branch", "weight": 0.5, "reduction": 4, "lr": 0.02},
            {"name": "test_random_drop"},
        ],
    )


def assert_same_state(a: dict, b: dict, path: str = "") -> None:
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same_state(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{path}.{i}")
    elif isinstance(a, Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, path


@pytest.mark.parametrize("interruption", ["epochs", "stop_after"])
def test_resume_after_an_interruption_is_bit_identical(tmp_path, test_losses, interruption):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    if interruption == "epochs":  # run 1 epoch, then extend to 3 (step schedule: same lr)
        config = resumable("epochs=3", "schedule.name=step", "schedule.milestones=[2]")
        train(
            resumable("epochs=1", "schedule.name=step", "schedule.milestones=[2]"),
            resumed,
            verbose=0,
        )
    else:  # stopped after epoch 1 of a 3-epoch cosine run
        config = resumable("epochs=3", "schedule.name=cosine")
        train(config, resumed, stop_after=1, verbose=0)
        assert not json.loads((resumed / "summary.json").read_text())["finished"]
    assert load_checkpoint(resumed / "last.pt")["epoch"] == 1
    train(config, resumed, resume=True, verbose=0)
    train(config, straight, verbose=0)

    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    for key in ("model", "losses", "optimizer", "scheduler", "scaler", "rng", "best", "epoch"):
        assert_same_state(a[key], b[key], key)
    assert a["global_step"] == b["global_step"] == 3 * (1150 // 128)
    assert a["losses"][1]  # CC-Loss's attention parameters were saved and trained
    timing = ("epoch_time", "samples_per_s")
    if interruption == "epochs":  # the 1-epoch run was tested at its end; the straight one not
        assert a["history"][0]["test_acc"] is None and b["history"][0]["test_acc"] is not None
        b["history"][0]["test_acc"] = None
    strip = [{k: v for k, v in r.items() if k not in timing} for r in a["history"]]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in b["history"]]
    assert len(read_metrics(resumed)) == 3
    assert filecmp.cmp(straight / "best.pt", resumed / "best.pt", shallow=False) or (
        load_checkpoint(straight / "best.pt")["epoch"]
        == load_checkpoint(resumed / "best.pt")["epoch"]
    )


def test_resume_errors(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"cannot resume: .*last.pt does not exist"):
        train(tiny(), run, resume=True, verbose=0)
    train(tiny(), run, verbose=0)
    with pytest.raises(ConfigError, match=r"already holds a run \(last.pt\); use --resume"):
        train(tiny(), run, verbose=0)
    with pytest.raises(
        CheckpointError,
        match=r"last.pt was trained with model convnet_small \{'width': 4\}, but the config "
        r"has model convnet_small \{'width': 8\}$",  # only what differs, not every default
    ):
        train(tiny("model.width=8"), run, resume=True, verbose=0)
    with pytest.raises(
        CheckpointError, match=r"trained with losses \[ce\], but the config has losses \[ce, cc\]"
    ):
        train(tiny(losses=[{"name": "ce"}, {"name": "cc"}]), run, resume=True, verbose=0)
    # a finished run resumed with the same epochs does nothing more
    before = (run / "last.pt").stat().st_mtime_ns
    assert train(tiny(), run, resume=True, verbose=0)["epochs"] == 1
    assert (run / "last.pt").stat().st_mtime_ns == before


def test_checkpoint_files_are_checked_and_written_atomically(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt is not a readable chanloss checkpoint"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(CheckpointError, match="other.pt is not a chanloss checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")

    path = tmp_path / "ck.pt"
    save_checkpoint({"x": torch.arange(3)}, path)
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be pickled
        save_checkpoint({"x": lambda: 0}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(3))  # the old file survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "garbage.pt", "other.pt"]


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(5)
    state = capture_rng(torch.device("cpu"), gen)
    first = (
        torch.rand(3),
        np.random.rand(3),  # noqa: NPY002
        random.random(),
        torch.rand(3, generator=gen),
    )
    save_checkpoint({"rng": state}, tmp_path / "rng.pt")
    restore_rng(load_checkpoint(tmp_path / "rng.pt")["rng"], torch.device("cpu"), gen)
    second = (
        torch.rand(3),
        np.random.rand(3),  # noqa: NPY002
        random.random(),
        torch.rand(3, generator=gen),
    )
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2] == second[2] and torch.equal(first[3], second[3])


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


# -- eval and compare --------------------------------------------------------------------------
def test_eval_writes_accuracy_per_class_and_confusion(tmp_path):
    run = tmp_path / "run"
    summary = train(tiny("epochs=2"), run, verbose=0)
    result = evaluate_checkpoint(run / "last.pt", verbose=0)
    out = run / "eval-last" / "test"
    assert json.loads((out / "eval.json").read_text()) == result
    assert result["top1"] == pytest.approx(summary["final_test_acc"], abs=1e-6)
    assert result["top5"] >= result["top1"] and result["samples"] == 360 and result["epoch"] == 2
    with open(out / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true \\ predicted", *[str(c) for c in range(10)]]
    matrix = torch.tensor([[int(v) for v in r[1:]] for r in rows[1:]])
    labels = build_datasets("digits").test.labels
    assert matrix.sum(1).tolist() == torch.bincount(labels, minlength=10).tolist()
    assert matrix.trace().item() / 360 == pytest.approx(result["top1"], abs=1e-6)
    per_class = (matrix.diag() / matrix.sum(1)).tolist()
    assert list(result["per_class_accuracy"].values()) == pytest.approx(per_class)
    with open(out / "per_class_accuracy.csv", newline="") as f:
        assert [float(r["accuracy"]) for r in csv.DictReader(f)] == pytest.approx(per_class)
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match=r"split 'val' is not available; the run has \['test'\]"):
        evaluate_checkpoint(run / "last.pt", tmp_path / "e", split="val", verbose=0)


def test_compare_tabulates_seeds_and_skips_finished_runs(tmp_path, capsys):
    configs = [("a-ce", tiny()), ("b-cc", tiny(losses=[{"name": "ce"}, {"name": "cc"}]))]
    out = tmp_path / "cmp"
    results = compare(configs, seeds=2, out_dir=out)
    for r, (label, _) in zip(results, configs, strict=True):
        accs = [
            json.loads((out / label / f"seed{s}" / "summary.json").read_text())["final_test_acc"]
            for s in (0, 1)
        ]
        assert r.label == label and r.seeds == [0, 1] and r.test_acc == accs
        assert r.mean == pytest.approx(statistics.mean(accs))
        assert r.std == pytest.approx(statistics.stdev(accs))
    seeds = [
        load_checkpoint(out / "a-ce" / f"seed{s}" / "last.pt")["config"]["seed"] for s in (0, 1)
    ]
    assert seeds == [0, 1]
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["config"] for r in rows] == ["a-ce", "b-cc"]
    assert float(rows[1]["test_acc_mean"]) == pytest.approx(results[1].mean, abs=1e-6)
    md = (out / "results.md").read_text()
    assert "| b-cc | convnet_small | ce + cc |" in md
    assert f"{100 * results[0].mean:.2f} ± {100 * results[0].std:.2f}" in md
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"

    capsys.readouterr()
    stamp = (out / "a-ce" / "seed0" / "last.pt").stat().st_mtime_ns
    again = compare(configs, seeds=2, out_dir=out)
    assert [r.test_acc for r in again] == [r.test_acc for r in results]
    assert capsys.readouterr().out.count("finished earlier") == 4
    assert (out / "a-ce" / "seed0" / "last.pt").stat().st_mtime_ns == stamp

    with pytest.raises(ConfigError, match=r"seed0 holds a run of a different config"):
        compare([("a-ce", tiny("optim.lr=0.01"))], seeds=1, out_dir=out)
    with pytest.raises(ConfigError, match="two configs have the same name 'a-ce'"):
        compare([configs[0], configs[0]], seeds=1, out_dir=out)


def test_runs_written_before_the_schema_gained_keys_still_resume_and_are_skipped(tmp_path, capsys):
    """A run's config.yaml and checkpoint lack keys added to the schema later (they have
    defaults): compare still recognises the run and train --resume continues it."""
    import yaml

    config = tiny()
    out = tmp_path / "cmp"
    compare([("a", config)], seeds=1, out_dir=out)
    run = out / "a" / "seed0"
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert {"distributed", "on_nonfinite"} <= set(stored)
    older = {k: v for k, v in stored.items() if k not in ("distributed", "on_nonfinite")}
    older["data"] = {k: v for k, v in stored["data"].items() if k != "sampler"}  # checked on resume
    (run / "config.yaml").write_text(yaml.safe_dump(older))
    for name in ("last.pt", "best.pt"):
        if (run / name).exists():
            state = load_checkpoint(run / name)
            state["config"] = {k: older[k] for k in state["config"] if k in older}
            save_checkpoint(state, run / name)
    capsys.readouterr()
    compare([("a", config)], seeds=1, out_dir=out)
    assert capsys.readouterr().out.count("finished earlier") == 1
    summary = train(tiny(epochs=2, seed=0), run, resume=True, verbose=0)
    assert summary["epochs"] == 2 and summary["finished"]
    # a stored config that no longer validates is another config, not a crash
    (run / "config.yaml").write_text(yaml.safe_dump({**older, "epochz": 1}))
    with pytest.raises(ConfigError, match="holds a run of a different config"):
        compare([("a", tiny(epochs=2))], seeds=1, out_dir=out)
