"""Multi-process training (gloo, CPU, 2 processes): parity with one process on the global batch,
the ``chanloss train --nproc 2`` run files, resume, and the launcher's command line."""

from __future__ import annotations

import copy
import csv
import json
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn

import chanloss.run.build as trainer_module  # where the run is built
from chanloss.analysis.evaluate import evaluate_checkpoint
from chanloss.cli import main
from chanloss.config import ConfigError, load_config
from chanloss.experiments.launcher import worker_command
from chanloss.run.checkpoint import CheckpointError
from chanloss.run.distributed import choose_backend
from chanloss.run.session import train
from chanloss.run.trainer import Trainer

WORLD, LOCAL_B, SUBSET, EPOCHS = 2, 16, 96, 2  # 3 steps per epoch of 2 x 16 (or 1 x 32) samples
BASE = {
    "model": {"name": "convnet_small", "width": 4, "feature_channels": 20},
    "data": {"name": "digits"},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "constant"},
    "epochs": EPOCHS,
    "device": "cpu",
}
CASES = {
    # the ratio form: its larger gradient moves the SE weights enough for the check to bite
    "cc": [{"name": "ce"}, {"name": "cc", "form": "ratio", "reduction": 4, "weight": 2.0}],
    "mc": [{"name": "ce"}, {"name": "mc"}],
}


def parity_config(losses: list[dict], batch_size: int) -> object:
    return load_config(raw={**copy.deepcopy(BASE), "losses": losses, "batch_size": batch_size})


def patch_float64_without_bn(target: object) -> None:
    """Build float64 models without batch norm (per-rank statistics would differ from the
    global batch's) on the first SUBSET training samples; ``target`` gets the patched builders
    (the trainer module, or pytest's monkeypatch)."""
    build_data, build_model, build_losses = (
        trainer_module.build_data,
        trainer_module.build_model,
        trainer_module.build_losses,
    )

    def data(config):
        bundle = build_data(config)
        bundle.train = bundle.train.subset(range(SUBSET))
        bundle.train.images = bundle.train.images.double()
        return bundle

    def model(config, **kw):
        net = build_model(config, **kw)
        for child in list(net.modules()):
            for attr, sub in list(child.named_children()):
                if isinstance(sub, nn.BatchNorm2d):
                    setattr(child, attr, nn.Identity())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        return net.double()

    def losses(config, net, num_classes):
        slots = build_losses(config, net, num_classes)
        for slot in slots:
            slot.loss.double()
        return slots

    for name, fn in (("build_data", data), ("build_model", model), ("build_losses", losses)):
        if hasattr(target, "setattr"):
            target.setattr(trainer_module, name, fn)
        else:
            setattr(target, name, fn)


def run_parity(losses: list[dict], batch_size: int) -> dict:
    """Train EPOCHS epochs; the final states and the generator state after every step."""
    trainer = Trainer(parity_config(losses, batch_size), "unused", verbose=0)
    step, states = trainer.step_module, []

    def recording(x, y, generator):
        result = step(x, y, generator)
        states.append(generator.get_state().clone())
        return result

    trainer.step_module = recording
    for epoch in range(EPOCHS):
        trainer.train_epoch(epoch)
    return {
        "model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "losses": {k: v.clone() for k, v in trainer.losses.state_dict().items()},
        "generator": states,
        "scales": list(trainer.losses.scales),
        "steps": trainer.global_step,
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        patch_float64_without_bn(trainer_module)
        result = {name: run_parity(losses, LOCAL_B) for name, losses in CASES.items()}
        try:
            raw = {**copy.deepcopy(BASE), "losses": CASES["cc"], "distributed": {"sync_bn": True}}
            Trainer(load_config(raw=raw), "unused", verbose=0)
            result["sync_bn_error"] = None
        except ConfigError as err:
            result["sync_bn_error"] = str(err)
        raw = {**copy.deepcopy(BASE), "losses": CASES["cc"], "batch_size": 8}
        raw["data"] = {"name": "digits", "sampler": "class_balanced", "samples_per_class": 2}
        balanced = Trainer(load_config(raw=raw), "unused", verbose=0).train_batches  # 96 samples
        result["balanced"] = (balanced.sampler.index_batches(1), balanced.labels)
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    # DDP keeps the gloo group alive past destroy_process_group; exiting through the C++ exit
    # handlers can then abort the process (see chanloss.cli.entry), so leave at once.
    os._exit(0)


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    diffs = [float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()]
    return max(diffs, default=0.0)


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_train_like_one_process_on_the_global_batch(rank_results, case, monkeypatch):
    patch_float64_without_bn(monkeypatch)
    single = run_parity(CASES[case], WORLD * LOCAL_B)
    ranks = [r[case] for r in rank_results]
    assert single["steps"] == ranks[0]["steps"] == EPOCHS * SUBSET // (WORLD * LOCAL_B)
    assert ranks[0]["scales"] == ([1, WORLD] if case == "cc" else [1, 1])
    for part in ("model", "losses"):
        for r in ranks[1:]:  # DDP keeps the ranks bit-identical
            assert max_abs_diff(r[part], ranks[0][part]) == 0.0
        diff = max_abs_diff(ranks[0][part], single[part])
        print(f"{case} {part}: max |2 ranks - 1 process| = {diff:.3g}")
        assert diff < 1e-10
        # The check has teeth: training moved the weights far more than the tolerance.
        start = Trainer(parity_config(CASES[case], LOCAL_B), "unused", verbose=0)
        start_state = (start.model if part == "model" else start.losses).state_dict()
        if start_state:
            assert (
                max_abs_diff({k: v.double() for k, v in start_state.items()}, single[part]) > 1e-3
            )
    if case == "cc":  # the gate placement: the SE weights are the model's, compared above
        assert any(k.startswith("gate.") for k in single["model"])
    # The generator handed to MC-Loss is in the same state on every rank after every step.
    for r in ranks[1:]:
        assert all(
            torch.equal(a, b) for a, b in zip(r["generator"], ranks[0]["generator"], strict=True)
        )
    assert all(
        torch.equal(a, b) for a, b in zip(single["generator"], ranks[0]["generator"], strict=True)
    )
    if case == "mc":
        assert not torch.equal(ranks[0]["generator"][0], ranks[0]["generator"][1])


def test_each_rank_trains_on_its_own_class_balanced_batches(rank_results):
    (first, labels), (second, _) = (r["balanced"] for r in rank_results)
    assert first.shape == second.shape and first.shape[0] >= 4  # same number of steps
    assert not set(first.flatten().tolist()) & set(second.flatten().tolist())
    for batch in torch.cat([first, second]):
        counts = torch.bincount(labels[batch])
        assert sorted(counts[counts > 0].tolist()) == [2, 2, 2, 2]  # P=4 classes x M=2


def test_sync_bn_on_cpu_processes_is_a_config_error(rank_results):
    for r in rank_results:
        assert "distributed.sync_bn needs CUDA devices" in r["sync_bn_error"]


# -- the command line, 2 processes -------------------------------------------------------------
TINY = {
    "model": {"name": "convnet_small", "width": 4, "feature_channels": 20},
    "data": {"name": "digits", "val_fraction": 0.1},
    "losses": [{"name": "ce"}, {"name": "cc", "reduction": 4}],
    "optim": {"lr": 0.05},
    "schedule": {"name": "constant"},
    "epochs": 2,
    "batch_size": 64,
    "device": "cpu",
}


def chanloss(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``chanloss ARGV`` in this process (``--nproc`` starts torchrun from here)."""
    status = main(list(argv))
    out, err = capfd.readouterr()
    return status, out, err


def read_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_train_nproc_2_writes_one_run_scores_the_whole_test_set_and_resumes(
    tmp_path, monkeypatch, capfd
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    Path("tiny.yaml").write_text(yaml.safe_dump(TINY))
    status, out, err = chanloss(capfd, "train", "-c", "tiny.yaml", "--nproc", "2", "--out", "run")
    assert status == 0, err[-3000:]
    run = tmp_path / "run"
    files = sorted(p.name for p in run.iterdir() if not p.name.startswith("."))
    assert files == ["best.pt", "config.yaml", "last.pt", "metrics.csv", "summary.json"]
    assert out.count("final test accuracy") == 1  # rank 0 only
    assert out.count("epoch 1/2") == 1
    rows = read_rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["finished"]
    # The reported accuracy is over the whole test set, not rank 0's half.
    scored = evaluate_checkpoint(run / "last.pt", tmp_path / "eval", device="cpu", verbose=0)
    assert scored["samples"] == 360
    assert float(rows[-1]["test_acc"]) == pytest.approx(scored["top1"], abs=1e-6)  # 6 digits
    assert summary["final_test_acc"] == pytest.approx(scored["top1"], abs=1e-7)
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["meta"]["world_size"] == 2 and len(state["rng_ranks"]) == 2

    status, out, err = chanloss(
        capfd, "train", "--out", "run", "--resume", "--set", "epochs=3", "--nproc", "2"
    )
    assert status == 0, err[-3000:]
    assert out.count("epoch 3/3") == 1 and "epoch 2/" not in out
    again = read_rows(run)
    assert [r["epoch"] for r in again] == ["1", "2", "3"] and again[:2] == rows
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == files

    with pytest.raises(
        CheckpointError, match=r"written by a run of 2 process\(es\) and this run has 1"
    ):
        train(load_config(run / "config.yaml", ["epochs=4"]), run, resume=True, verbose=0)


# -- small pieces ------------------------------------------------------------------------------
def test_worker_command_drops_nproc_in_every_spelling():
    argv = ["train", "-c", "a.yaml", "--nproc", "2", "--set", "epochs=3", "--npr=4", "--out", "o"]
    cmd = worker_command(argv)
    assert cmd == [
        *(sys.executable, "-m", "chanloss", "train", "-c", "a.yaml"),
        *("--set", "epochs=3", "--out", "o"),
    ]


def test_nproc_inside_torchrun_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "-c", str(tmp_path / "tiny.yaml"), "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert "--nproc starts the processes itself" in err and "WORLD_SIZE=2" in err
    assert main(["train", "-c", str(tmp_path / "tiny.yaml"), "--nproc", "0"]) == 2
    assert "--nproc: must be an integer >= 1, got '0'" in capsys.readouterr().err


def test_backend_choice():
    assert choose_backend("auto", torch.device("cpu")) == "gloo"
    assert choose_backend("auto", torch.device("cuda", 0)) == "nccl"
    with pytest.raises(ConfigError, match="backend 'nccl' needs CUDA devices, got device cpu"):
        choose_backend("nccl", torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"backend must be one of .*, got 'mpi'"):
        choose_backend("mpi", torch.device("cpu"))
