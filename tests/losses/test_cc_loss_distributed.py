"""CC-Loss on 2 processes (gloo, CPU) equals the single-process loss on the global batch."""

import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from chanloss.losses import CCLoss, CenterLoss

WORLD, LOCAL_B, C = 2, 5, 8
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 2, 0, 1, 1])  # classes span both ranks


def global_batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * LOCAL_B, C, 3, 2, generator=gen, dtype=torch.float64)


def make_loss(pair_reduction):
    torch.manual_seed(0)  # the same SE initialisation in every process
    return CCLoss(
        placement="branch", num_channels=C, reduction=2, pair_reduction=pair_reduction, form="ratio"
    ).double()


def make_center():
    torch.manual_seed(4)
    return CenterLoss(num_classes=3, embedding_dim=C).double()


def make_model():
    torch.manual_seed(2)
    return torch.nn.Conv2d(3, C, kernel_size=1).double()


def model_input():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(WORLD * LOCAL_B, 3, 3, 2, generator=gen, dtype=torch.float64)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, out_dir):
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=30),
    )
    try:
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        result = {}
        for pair_reduction in ("mean", "sum"):
            loss = make_loss(pair_reduction)
            x = global_batch()[rows].clone().requires_grad_()
            value = loss(x, LABELS[rows])
            value.backward()
            result[pair_reduction] = {
                "value": value.detach(),
                "grad_x": x.grad,
                "grad_params": [p.grad for p in loss.parameters()],
                "gathers": loss.gathers_across_ranks,
            }
        # DDP averages gradients over ranks: world_size * loss gives the single-process ones.
        loss = make_loss("mean")
        model = DistributedDataParallel(make_model())
        scale = WORLD if loss.gathers_across_ranks else 1
        objective = scale * loss(model(model_input()[rows]), LABELS[rows])
        objective.backward()
        result["ddp_grads"] = [p.grad for p in model.parameters()]
        # Unequal per-rank batch sizes are detected on every rank (no rank hangs).
        short = global_batch()[rows][: LOCAL_B - rank]
        try:
            loss(short, LABELS[rows][: LOCAL_B - rank])
            result["unequal"] = None
        except ValueError as err:
            result["unequal"] = str(err)
        # The centre loss's published update uses the all-gathered (global) batch on every rank.
        center = make_center()
        center.update_state(global_batch()[rows, :, 0, 0], LABELS[rows])
        result["centers"] = center.centers.clone()
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("cc_dist")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("pair_reduction", ["mean", "sum"])
def test_two_ranks_equal_single_process_on_global_batch(rank_results, pair_reduction):
    loss = make_loss(pair_reduction)
    x = global_batch().requires_grad_()
    value = loss(x, LABELS)
    value.backward()
    param_grads = [torch.zeros_like(p) for p in loss.parameters()]
    for rank, result in enumerate(rank_results):
        got = result[pair_reduction]
        assert got["gathers"] is True
        torch.testing.assert_close(got["value"], value.detach(), rtol=1e-10, atol=1e-12)
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        torch.testing.assert_close(got["grad_x"], x.grad[rows], rtol=1e-6, atol=1e-12)
        param_grads = [s + g for s, g in zip(param_grads, got["grad_params"], strict=True)]
    for total, p in zip(param_grads, loss.parameters(), strict=True):
        torch.testing.assert_close(total, p.grad, rtol=1e-6, atol=1e-12)
    assert not loss.gathers_across_ranks  # no process group here


def test_world_size_scaled_objective_under_ddp_gives_single_process_gradients(rank_results):
    loss, model = make_loss("mean"), make_model()
    loss(model(model_input()), LABELS).backward()
    for result in rank_results:
        for got, p in zip(result["ddp_grads"], model.parameters(), strict=True):
            torch.testing.assert_close(got, p.grad, rtol=1e-6, atol=1e-12)


def test_unequal_batch_sizes_raise_on_every_rank(rank_results):
    for result in rank_results:
        message = result["unequal"]
        assert message is not None
        assert "same batch size on every rank" in message and "[5, 4]" in message


def test_center_update_uses_the_global_batch_on_every_rank(rank_results):
    center = make_center()
    center.update_state(global_batch()[:, :, 0, 0], LABELS)
    for result in rank_results:
        torch.testing.assert_close(result["centers"], center.centers, rtol=0, atol=1e-14)
