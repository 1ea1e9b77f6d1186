"""The loop's plain functions: train_one_epoch called without a Trainer trains exactly as the
Trainer does; evaluate and the epoch position against plain references."""

from __future__ import annotations

import copy
import time

import pytest
import torch
from tiny_config import TINY

from chanloss.config import load_config
from chanloss.run.build import build_run
from chanloss.run.epoch import (
    EpochPosition,
    EpochWatch,
    StepCount,
    StepParts,
    evaluate,
    train_one_epoch,
)
from chanloss.run.grad_share import GradShare
from chanloss.run.stopping import NonFiniteCheck, StopRequest
from chanloss.run.trainer import Trainer

TIMING = {"samples_per_s"}


def config():
    raw = copy.deepcopy(TINY)
    raw["losses"] = [{"name": "ce"}, {"name": "mc", "weight": 0.1}]
    return load_config(raw=raw)


def test_train_one_epoch_without_a_trainer_trains_as_the_trainer_does(tmp_path):
    cfg = config()
    trainer = Trainer(cfg, tmp_path / "trainer", verbose=0)
    expected = trainer.train_epoch(0)

    parts, training = build_run(cfg)
    columns = [c for slot in parts.slots for c in slot.columns.values()]
    steps = training.steps_per_epoch
    step_parts = StepParts(
        model=training.model,
        losses=parts.losses,
        step_module=training.step_module,
        optimizer=training.optimizer,
        scheduler=training.scheduler,
        scaler=training.scaler,
        params=[*training.model.parameters(), *parts.losses.parameters()],
        augment=parts.train_aug,
        generator=training.generator,
        autocast=lambda: torch.autocast("cpu", enabled=False),
        device=parts.device,
    )
    last = tmp_path / "plain" / "last.pt"
    watch = EpochWatch(
        columns=columns,
        nonfinite=NonFiniteCheck(parts.device, columns, "stop", steps, last),
        check_every_step=True,
        raise_first_bad=lambda epoch: None,
        stop=StopRequest(),
        world_size=1,
        grad_share=GradShare(parts.slots, cfg.grad_share_every, gated=False),
        last=last,
    )
    count = StepCount()
    row = train_one_epoch(
        0,
        step_parts,
        training.train_batches,
        watch,
        config=cfg,
        count=count,
        on_interrupt=lambda partial: pytest.fail("no stop was requested"),
    )
    assert count.value == steps == trainer.global_step
    assert {k: v for k, v in row.items() if k not in TIMING} == {
        k: v for k, v in expected.items() if k not in TIMING
    }
    mine, theirs = training.model.state_dict(), trainer.model.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_a_stop_request_hands_the_position_to_on_interrupt(tmp_path):
    trainer = Trainer(config(), tmp_path / "run", verbose=0)
    trainer.stop.requested = True  # as the signal handler sets it
    saved = {}

    def interrupt(partial):
        saved.update(partial)
        raise KeyboardInterrupt

    trainer._interrupt = interrupt
    with pytest.raises(KeyboardInterrupt):
        trainer.train_epoch(0)
    assert saved["epoch"] == 0 and saved["step"] == 1 and trainer.global_step == 1
    assert saved["seen"] == TINY["batch_size"] and saved["skipped"] == 0
    assert set(saved) == {"epoch", "step", "sums", "correct", "seen", "skipped"} | {
        "elapsed",
        "grad_share",
    }


def test_evaluate_is_the_top1_accuracy_of_the_predictions():
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(n, 5, generator=gen), torch.randint(0, 5, (n,), generator=gen))
        for n in (7, 3, 11)
    ]
    hits = sum(
        int(scores[i].argmax() == labels[i])
        for scores, labels in batches
        for i in range(len(labels))
    )
    accuracy = evaluate(iter(batches), torch.device("cpu"))
    assert accuracy == pytest.approx(hits / 21, abs=1e-7)
    assert evaluate(iter([]), torch.device("cpu")) == 0.0


def test_an_epoch_position_round_trips_through_its_saved_state():
    sums = torch.tensor([1.5, 2.5, 4.0])
    position = EpochPosition(4, sums, torch.tensor(9), seen=40, skipped=1, elapsed=0.0)
    share = GradShare([], 0, gated=False)
    share.points = [[0.1, 0.2]]
    state = position.state(3, time.perf_counter() - 2.0, share)
    assert state["epoch"] == 3 and state["grad_share"] == [[0.1, 0.2]]
    assert state["elapsed"] >= 2.0
    back = EpochPosition.begin(2, torch.device("cpu"), state)
    assert (back.step, back.seen, back.skipped) == (4, 40, 1)
    assert torch.equal(back.sums, sums) and int(back.correct) == 9
    assert back.elapsed == state["elapsed"]
    fresh = EpochPosition.begin(2, torch.device("cpu"), None)
    assert fresh.step == 0 and torch.equal(fresh.sums, torch.zeros(3)) and fresh.seen == 0
