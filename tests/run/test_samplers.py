"""Per-rank index batches: shuffled (DistributedSampler-like) and class-balanced (P x M)."""

from __future__ import annotations

import copy

import pytest
import torch

from chanloss.config import ConfigError, load_config
from chanloss.run.builders import Batches
from chanloss.run.samplers import (
    RankBatchSampler,
    class_balanced_batches,
    shuffled_batches,
)
from chanloss.run.session import train
from chanloss.run.trainer import Trainer

# 5 classes of uneven size: 23, 17, 9, 3 (fewer than M=4: never drawn) and 40 samples.
LABELS = torch.repeat_interleave(torch.tensor([0, 1, 2, 3, 4]), torch.tensor([23, 17, 9, 3, 40]))
LABELS = LABELS[torch.randperm(len(LABELS), generator=torch.Generator().manual_seed(5))]


def balanced(**kw: object) -> torch.Tensor:
    args = {"batch_size": 12, "samples_per_class": 4, "epoch": 0, "seed": 3} | kw
    return class_balanced_batches(LABELS, **args)


# -- shuffled batches --------------------------------------------------------------------------
def test_one_process_cuts_one_permutation_per_epoch_into_batches():
    for epoch in (0, 1):
        order = torch.randperm(92, generator=torch.Generator().manual_seed(7 * 1_000_003 + epoch))
        got = shuffled_batches(92, batch_size=10, epoch=epoch, seed=7)
        assert torch.equal(got, order[:90].view(9, 10))  # the incomplete last batch is dropped
    small = shuffled_batches(8, batch_size=10, epoch=0, seed=7)
    assert small.shape == (1, 8) and sorted(small.flatten().tolist()) == list(range(8))
    assert not torch.equal(
        shuffled_batches(92, batch_size=10, epoch=0, seed=7),
        shuffled_batches(92, batch_size=10, epoch=1, seed=7),
    )


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_together_cover_the_single_process_batches_of_the_global_size(world):
    size, b = 101, 8
    ranks = [
        shuffled_batches(size, batch_size=b, epoch=2, seed=1, rank=r, world_size=world)
        for r in range(world)
    ]
    single = shuffled_batches(size, batch_size=world * b, epoch=2, seed=1)
    assert all(r.shape == single.shape[:1] + (b,) for r in ranks)
    for step in range(single.shape[0]):
        together = torch.cat([r[step] for r in ranks])
        assert sorted(together.tolist()) == sorted(single[step].tolist())
        assert len(set(together.tolist())) == world * b  # ranks disjoint


def test_too_few_samples_for_the_ranks_is_an_error():
    with pytest.raises(
        ValueError, match=r"at least one sample per process: expected >= 4 .* got 3"
    ):
        shuffled_batches(3, batch_size=2, epoch=0, seed=0, rank=0, world_size=4)


# -- class-balanced batches --------------------------------------------------------------------
def test_every_batch_holds_p_classes_of_m_samples():
    for epoch in range(4):
        batches = balanced(epoch=epoch)
        assert batches.shape[1] == 12
        for batch in batches:
            labels = LABELS[batch]
            counts = torch.bincount(labels, minlength=5)
            assert sorted(counts[counts > 0].tolist()) == [4, 4, 4]  # P=3 classes x M=4
            assert counts[3] == 0  # class 3 has fewer than M samples
            assert len(set(batch.tolist())) == 12
        flat = batches.flatten().tolist()
        assert len(flat) == len(set(flat))  # each sample at most once per epoch


def test_batch_count_is_the_largest_that_respects_one_chunk_per_class():
    # Chunks of M=4 per class: 5, 4, 2, 0, 10; P=3 chunks per batch, at most G of one class.
    # G=7: 5+4+2+7 = 18 < 21; G=6: 5+4+2+6 = 17 < 18; G=5: 5+4+2+5 = 16 >= 15.
    assert balanced().shape[0] == 5
    assert balanced(world_size=2, rank=1).shape[0] == 2  # 5 batches dealt to 2 ranks


def test_balanced_batches_are_deterministic_per_seed_and_epoch():
    assert torch.equal(balanced(epoch=1), balanced(epoch=1))
    assert not torch.equal(balanced(epoch=1), balanced(epoch=2))
    assert not torch.equal(balanced(seed=4), balanced(seed=3))


def test_balanced_ranks_get_disjoint_batches_of_equal_count():
    labels = torch.arange(200) % 10
    ranks = [
        class_balanced_batches(
            labels, batch_size=8, samples_per_class=2, epoch=1, seed=0, rank=r, world_size=2
        )
        for r in range(2)
    ]
    assert ranks[0].shape == ranks[1].shape and ranks[0].shape[0] >= 10
    assert not set(ranks[0].flatten().tolist()) & set(ranks[1].flatten().tolist())
    single = class_balanced_batches(labels, batch_size=8, samples_per_class=2, epoch=1, seed=0)
    assert single.shape[0] == 25  # 200 / 8; the ranks use 2 x 12 of them
    for step in range(12):  # the same plan, dealt to the two ranks in turn
        assert torch.equal(ranks[0][step], single[2 * step])
        assert torch.equal(ranks[1][step], single[2 * step + 1])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"samples_per_class": 1}, r"samples_per_class >= 2 dividing batch_size, got .*=1"),
        ({"batch_size": 10}, r"dividing batch_size, got samples_per_class=4 and batch_size=10"),
        ({"batch_size": 20}, r"need P=5 classes with at least samples_per_class=4 .* got 4"),
        ({"world_size": 8}, r"fills 5 class-balanced batch\(es\) .* fewer than the 8 process"),
    ],
)
def test_balanced_errors_name_the_numbers(kw, message):
    with pytest.raises(ValueError, match=message):
        balanced(**kw)


# -- the sampler object ------------------------------------------------------------------------
def test_sampler_iterates_the_epoch_set_and_serves_a_dataloader():
    sampler = RankBatchSampler(
        len(LABELS),
        batch_size=12,
        train=True,
        seed=3,
        sampler="class_balanced",
        samples_per_class=4,
        labels=LABELS,
    )
    sampler.set_epoch(2)
    assert list(sampler) == balanced(epoch=2).tolist()
    assert len(sampler) == 5
    data = torch.utils.data.TensorDataset(torch.arange(len(LABELS)), LABELS)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
    got = torch.stack([idx for idx, _ in loader])
    assert torch.equal(got, balanced(epoch=2))


def test_evaluation_shards_cover_every_sample_once_without_padding():
    seen = []
    for rank in range(3):
        sampler = RankBatchSampler(10, batch_size=2, train=False, rank=rank, world_size=3)
        batches = list(sampler)
        assert len(sampler) == len(batches)
        seen += [i for batch in batches for i in batch]
    assert seen == list(range(10))


def test_sampler_argument_errors():
    with pytest.raises(ValueError, match=r"sampler must be one of .*, got 'pk'"):
        RankBatchSampler(10, batch_size=2, train=True, sampler="pk")
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        RankBatchSampler(10, batch_size=2, train=True, rank=2, world_size=2)
    with pytest.raises(ValueError, match="needs the training labels"):
        RankBatchSampler(10, batch_size=2, train=True, sampler="class_balanced")


# -- in the trainer ----------------------------------------------------------------------------
TINY = {
    "model": {"name": "convnet_small", "width": 4, "feature_channels": 20},
    "data": {"name": "digits", "sampler": "class_balanced", "samples_per_class": 4},
    "losses": [{"name": "ce"}, {"name": "cc", "reduction": 4}],
    "optim": {"lr": 0.05},
    "schedule": {"name": "constant"},
    "epochs": 2,
    "batch_size": 32,
    "device": "cpu",
}


def test_config_checks_the_balanced_batch_shape():
    raw = copy.deepcopy(TINY)
    raw["batch_size"] = 30
    with pytest.raises(ConfigError, match=r"batch_size: .* divisible by .*=4, got 30"):
        load_config(raw=raw)
    raw = copy.deepcopy(TINY)
    raw["data"]["samples_per_class"] = 1
    with pytest.raises(ConfigError, match=r"data.samples_per_class: .* greater than or equal to 2"):
        load_config(raw=raw)
    with pytest.raises(ConfigError, match=r"data.sampler: Input should be 'random' or 'class_b"):
        load_config(raw=raw | {"data": {"name": "digits", "sampler": "pk"}})


class _NoTensors(torch.utils.data.Dataset):
    """The digits training set behind the per-item (DataLoader) path, labels as .targets."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self._images, self.targets = images, labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._images[i], int(self.targets[i])


def test_trainer_batches_are_class_balanced_on_both_data_paths():
    trainer = Trainer(load_config(raw=copy.deepcopy(TINY)), "unused", verbose=0)
    memory = trainer.train_batches
    ds = trainer.data.train
    loader = Batches(
        _NoTensors(ds.images, ds.labels),
        batch_size=32,
        device=torch.device("cpu"),
        train=True,
        seed=0,
        sampler="class_balanced",
        samples_per_class=4,
    )
    assert not loader.in_memory and len(loader) == len(memory) > 30
    for (xa, ya), (xb, yb) in zip(memory.epoch(1), loader.epoch(1), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        counts = torch.bincount(ya)
        assert sorted(counts[counts > 0].tolist()) == [4] * 8


def test_resume_with_balanced_batches_matches_an_uninterrupted_run(tmp_path):
    config = load_config(raw=copy.deepcopy(TINY))
    whole = train(config, tmp_path / "whole", verbose=0)
    train(config, tmp_path / "parts", stop_after=1, verbose=0)
    resumed = train(config, tmp_path / "parts", resume=True, verbose=0)
    assert resumed["final_test_acc"] == whole["final_test_acc"]
    assert resumed["final_train_loss"] == whole["final_train_loss"]
