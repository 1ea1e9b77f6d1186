"""Centre loss: the published centre update (Wen et al. 2016, eq. 4; the authors' Caffe
CenterLossLayer) against a per-sample reference, in the trainer, and through checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_config import TINY

from chanloss.config import load_config
from chanloss.losses import CenterLoss
from chanloss.run.checkpoint import load_checkpoint
from chanloss.run.trainer import Trainer

K, D = 4, 3


def caffe_reference(centers, x, labels, alpha):
    """The Caffe layer's backward for the centres, one class and one sample at a time:
    variation_sum_j = sum_{i: y_i = j} (c_j - x_i); diff_j = variation_sum_j / (count_j + 1);
    then the solver's c_j -= alpha * diff_j."""
    c = centers.clone()
    new = c.clone()
    for j in range(c.shape[0]):
        count = 0
        variation = [0.0] * c.shape[1]
        for i in range(x.shape[0]):
            if int(labels[i]) == j:
                count += 1
                for d in range(c.shape[1]):
                    variation[d] += float(c[j, d]) - float(x[i, d])
        for d in range(c.shape[1]):
            new[j, d] = float(c[j, d]) - alpha * variation[d] / (count + 1.0)
    return new


@pytest.mark.parametrize("alpha", [0.5, 0.1])
def test_paper_update_matches_the_caffe_layer_per_sample(alpha):
    torch.manual_seed(0)
    loss = CenterLoss(num_classes=K, embedding_dim=D, alpha=alpha).double()
    x = torch.randn(7, D, dtype=torch.float64)
    labels = torch.tensor([0, 2, 2, 0, 2, 1, 0])  # class 3 absent: it must not move
    before = loss.centers.clone()
    value = loss(x, labels)
    torch.testing.assert_close(loss.centers, before)  # the forward pass changes nothing
    assert value.requires_grad is False  # neither x nor the (buffer) centres need grad
    loss.update_state(x, labels)
    expected = caffe_reference(before, x, labels, alpha)
    torch.testing.assert_close(loss.centers, expected, rtol=0, atol=1e-14)
    torch.testing.assert_close(loss.centers[3], before[3])
    assert not list(loss.parameters()) and "centers" in dict(loss.named_buffers())


def test_paper_update_in_float32_bfloat16_inputs_and_eval_mode():
    torch.manual_seed(1)
    loss = CenterLoss(num_classes=K, embedding_dim=D)
    x = torch.randn(6, D).to(torch.bfloat16)
    labels = torch.tensor([1, 1, 1, 0, 3, 3])
    before = loss.centers.clone()
    loss.eval()
    loss.update_state(x, labels)
    assert torch.equal(loss.centers, before)  # no update outside training
    loss.train()
    loss.update_state(x, labels)
    expected = caffe_reference(before.double(), x.double(), labels, 0.5).float()
    assert loss.centers.dtype == torch.float32
    torch.testing.assert_close(loss.centers, expected, rtol=1e-6, atol=1e-6)


def test_sgd_mode_keeps_the_parameter_and_ignores_update_state():
    torch.manual_seed(2)
    loss = CenterLoss(num_classes=K, embedding_dim=D, center_update="sgd")
    assert [n for n, _ in loss.named_parameters()] == ["centers"]
    before = loss.centers.detach().clone()
    loss.update_state(torch.randn(3, D), torch.tensor([0, 1, 2]))
    assert torch.equal(loss.centers.detach(), before)
    # a state dict of one mode loads into the other
    paper = CenterLoss(num_classes=K, embedding_dim=D)
    paper.load_state_dict(loss.state_dict())
    assert torch.equal(paper.centers, before)


def test_bad_center_update_arguments():
    with pytest.raises(ValueError, match="center_update must be one of 'paper', 'sgd', got 'adam'"):
        CenterLoss(num_classes=K, embedding_dim=D, center_update="adam")
    with pytest.raises(ValueError, match=r"alpha must be a finite number in \[0, 1\], got 1.5"):
        CenterLoss(num_classes=K, embedding_dim=D, alpha=1.5)
    loss = CenterLoss(num_classes=K, embedding_dim=D)
    with pytest.raises(ValueError, match="labels"):
        loss.update_state(torch.randn(2, D), torch.tensor([0]))


def _config(**loss_options):
    raw = copy.deepcopy(TINY)
    raw["losses"] = [{"name": "ce"}, {"name": "center", "weight": 1.0, **loss_options}]
    return load_config(raw=raw)


def test_the_trainer_applies_the_update_once_per_step_and_checkpoints_keep_the_centres(tmp_path):
    trainer = Trainer(_config(), tmp_path / "run", verbose=0)
    center = trainer.slots[1].loss
    assert all(center.centers is not p for g in trainer.optimizer.param_groups for p in g["params"])
    start = center.centers.clone()
    calls = []
    original = center.update_state

    def record(inputs, labels):
        calls.append((inputs.clone(), labels.clone()))
        original(inputs, labels)

    center.update_state = record
    trainer.train_epoch(0)
    assert len(calls) == trainer.steps_per_epoch
    assert calls[0][0].shape[1] == trainer.model.embedding_dim and not calls[0][0].requires_grad
    replay = start.double()
    for inputs, labels in calls:
        replay = caffe_reference(replay, inputs.double(), labels, 0.5)
    torch.testing.assert_close(center.centers.double(), replay, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(center.centers, start)

    trainer.epoch = 1
    trainer.out_dir.mkdir(parents=True)
    trainer._save(best=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert torch.equal(state["losses"][1]["centers"], center.centers)
    resumed = Trainer(_config(), tmp_path / "resumed", verbose=0)
    assert not torch.equal(resumed.slots[1].loss.centers, center.centers)
    resumed.load_state(state, "last.pt")
    assert torch.equal(resumed.slots[1].loss.centers, center.centers)


def test_sgd_mode_trains_the_centres_through_the_optimiser(tmp_path):
    trainer = Trainer(_config(center_update="sgd", lr=1.0), tmp_path / "run", verbose=0)
    center = trainer.slots[1].loss
    groups = [
        g for g in trainer.optimizer.param_groups if any(p is center.centers for p in g["params"])
    ]
    assert len(groups) == 1 and groups[0]["lr"] == 1.0
