"""The GPU check's first three sections (gpu_check.py runs them): losses on CUDA equal the
CPU, backbones with AMP and channels-last, MC/CC speed against the softmax floor."""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # _common

import _common as common  # noqa: E402

NAME = "gpu_check"
CUB_TRAIN = 5994
CUB_TEST = 5794


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


# -- 1. losses: CUDA equals CPU ------------------------------------------------------------------
def _loss_inputs(consumes: str, b: int, k: int, c: int, d: int, hw: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    if consumes == "features":
        x = torch.randn(b, c, hw, hw, generator=gen).relu_()
    elif consumes == "embedding":
        x = torch.randn(b, d, generator=gen)
    elif consumes == "attention":  # CC-Loss's gate placement: the gate's (B, C) attention
        x = torch.rand(b, c, generator=gen)
    else:
        x = 2.0 * torch.randn(b, k, generator=gen)
    return x, torch.randint(0, k, (b,), generator=gen)


def _run_loss(loss: torch.nn.Module, x: Tensor, y: Tensor, kwargs: dict) -> tuple[Tensor, list]:
    x = x.detach().clone().requires_grad_(True)
    loss.zero_grad(set_to_none=True)
    value = loss(x, y, **kwargs)
    value.float().backward()
    grads = [x.grad] + [p.grad for p in loss.parameters() if p.grad is not None]
    return value.detach().float(), [g.detach().float() for g in grads]


def check_losses(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    from chanloss.losses import LOSSES as losses
    from chanloss.losses import create_loss

    b, k, c, d, hw = (4, 5, 10, 8, 3) if quick else (16, 20, 80, 64, 7)
    context = {"num_classes": k, "num_channels": c, "embedding_dim": d}
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    rows = []
    try:
        for name in sorted(losses):
            torch.manual_seed(0)
            cpu_loss = create_loss(name, context=context).train()
            gpu_loss = copy.deepcopy(cpu_loss).to(device)
            x, y = _loss_inputs(cpu_loss.consumes, b, k, c, d, hw)
            kwargs: dict[str, Any] = {}
            if name == "mc":
                kwargs["mask"] = (
                    torch.rand(c, generator=torch.Generator().manual_seed(1)) < 0.7
                ).float()
            value, grads = _run_loss(cpu_loss, x, y, kwargs)
            gkw = {key: v.to(device) for key, v in kwargs.items()}
            gvalue, ggrads = _run_loss(gpu_loss, x.to(device), y.to(device), gkw)
            value_diff = float((gvalue.cpu() - value).abs().max())
            grad_diff = max(
                float((g2.cpu() - g1).abs().max() / g1.abs().max().clamp_min(1e-12))
                for g1, g2 in zip(grads, ggrads, strict=True)
            )
            row: dict[str, Any] = {
                "loss": name,
                "consumes": cpu_loss.consumes,
                "fp32_value": float(value),
                "fp32_value_abs_diff": value_diff,
                "fp32_grad_rel_diff": grad_diff,
                "fp32_match": value_diff <= 1e-4 * max(1.0, abs(float(value)))
                and grad_diff <= 1e-3,
            }
            for dtype in (torch.float16, torch.bfloat16):
                key = "fp16" if dtype == torch.float16 else "bf16"
                try:
                    with torch.autocast(device.type, dtype=dtype):
                        v, gs = _run_loss(gpu_loss, x.to(device).to(dtype), y.to(device), gkw)
                    row[f"{key}_finite"] = bool(torch.isfinite(v)) and all(
                        bool(torch.isfinite(g).all()) for g in gs
                    )
                except (RuntimeError, TypeError) as err:  # e.g. a dtype the CPU autocast lacks
                    row[f"{key}_finite"] = None
                    row[f"{key}_error"] = f"{type(err).__name__}: {str(err)[:200]}"
            rows.append(row)
            common.log(
                f"  {name:>16}: fp32 |diff| {value_diff:.2e}, grad rel {grad_diff:.2e} "
                f"({'ok' if row['fp32_match'] else 'MISMATCH'}); finite fp16 {row['fp16_finite']}"
                f", bf16 {row['bf16_finite']}"
            )
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return rows


# -- 2. backbones with AMP and channels-last -----------------------------------------------------
def _backbones(quick: bool) -> list[dict[str, Any]]:
    if quick:
        return [
            {"model": "convnet_small", "options": {}, "size": 32, "batch": 2, "classes": 10},
            {"model": "resnet20", "options": {}, "size": 32, "batch": 2, "classes": 10},
            {
                "model": "resnet18",
                "options": {"width": 0.25},
                "size": 64,
                "batch": 2,
                "classes": 10,
            },
            {
                "model": "resnet50",
                "options": {"width": 0.25, "head": "mcloss"},
                "size": 64,
                "batch": 2,
                "classes": 10,
                "mc": {"drop": 1, "group_average": "per_size"},
            },
            {
                "model": "vgg16_bn",
                "options": {
                    "width": 0.25,
                    "channels_per_class": 3,
                    "widen_conv4_3": True,
                    "image_size": 64,
                    "head": "mcloss",
                },
                "size": 64,
                "batch": 2,
                "classes": 10,
                "mc": {},
            },
        ]
    return [
        {"model": "convnet_small", "options": {}, "size": 32, "batch": 128, "classes": 10},
        {"model": "resnet20", "options": {}, "size": 32, "batch": 128, "classes": 10},
        {"model": "resnet110", "options": {}, "size": 32, "batch": 128, "classes": 10},
        {"model": "resnet18", "options": {}, "size": 224, "batch": 64, "classes": 200},
        {
            "model": "resnet50",
            "options": {"head": "mcloss"},
            "size": 448,
            "batch": 32,
            "classes": 200,
            "mc": {
                "weight": 0.0005,
                "alpha": 1.0,
                "beta": 10.0,
                "drop": 4,
                "group_average": "per_size",
            },
            "cub": True,
        },
        {
            "model": "vgg16_bn",
            "options": {
                "channels_per_class": 3,
                "widen_conv4_3": True,
                "image_size": 224,
                "head": "mcloss",
            },
            "size": 224,
            "batch": 32,
            "classes": 200,
            "mc": {},
            "cub": True,
        },
    ]


def _timed_steps(
    model: torch.nn.Module,
    ce: torch.nn.Module,
    mc: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    x: Tensor,
    y: Tensor,
    amp_dtype: torch.dtype,
    steps: int,
    warmup: int,
) -> tuple[float, bool]:
    """Median ms of an AMP training step (CE, plus MC on the features) and whether every
    loss was finite."""
    finite = torch.ones((), dtype=torch.bool, device=x.device)

    def step() -> None:
        nonlocal finite
        with torch.autocast(x.device.type, dtype=amp_dtype):
            out = model(x)
            loss = ce(out.logits, y)
            if mc is not None:
                loss = loss + mc(out.features, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        finite = finite & torch.isfinite(loss.detach())

    ms = _median_ms(step, x.device, steps, warmup)
    return ms, bool(finite)


def check_backbones(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    from chanloss.config import OptimConfig
    from chanloss.losses import create_loss
    from chanloss.models import create_model
    from chanloss.run.optim import build_optimizer

    steps, warmup = (1, 0) if quick else (8, 3)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    rows = []
    for setup in _backbones(quick):
        torch.manual_seed(0)
        k, size, batch = setup["classes"], setup["size"], setup["batch"]
        in_ch = 3
        model = create_model(setup["model"], num_classes=k, in_channels=in_ch, **setup["options"])
        model = model.to(device).to(memory_format=torch.channels_last).train()
        ce = create_loss("ce").to(device)
        mc = None
        if "mc" in setup:
            mc = create_loss(
                "mc", context={"num_classes": k, "num_channels": model.num_features}, **setup["mc"]
            ).to(device)
        optimizer = build_optimizer(OptimConfig(lr=0.01), model, [], [])
        scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
        x = torch.randn(batch, in_ch, size, size, device=device).contiguous(
            memory_format=torch.channels_last
        )
        y = torch.randint(0, k, (batch,), device=device)
        ms, finite = _timed_steps(model, ce, mc, optimizer, scaler, x, y, amp_dtype, steps, warmup)
        row = {
            "model": setup["model"],
            "options": setup["options"],
            "image_size": size,
            "batch": batch,
            "losses": ["ce", "mc"] if mc is not None else ["ce"],
            "amp": str(amp_dtype).removeprefix("torch."),
            "channels_last": True,
            "finite": finite,
            "ms_per_step": ms,
            "images_per_s": 1000 * batch / ms,
        }
        if setup.get("cub"):
            row["epoch_estimate_s"] = CUB_TRAIN * ms / 1000 / batch
        if device.type == "cuda":
            row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
            torch.cuda.reset_peak_memory_stats(device)
        rows.append(row)
        common.log(
            f"  {setup['model']:>14} {size:>3} px, batch {batch:>3}: {ms:8.1f} ms/step "
            f"({row['images_per_s']:.0f} img/s), finite {row['finite']}"
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# -- 3. MC/CC against the softmax floor ----------------------------------------------------------
def check_loss_speed(device: torch.device, quick: bool) -> list[dict[str, Any]]:
    from chanloss.losses import create_loss

    shapes = [(2, 20, 3, 5)] if quick else [(32, 600, 14, 200), (64, 2048, 14, 200)]
    repeats, warmup = (1, 0) if quick else (30, 5)
    rows = []
    for b, c, hw, k in shapes:
        gen = torch.Generator().manual_seed(0)
        feats = torch.randn(b, c, hw, hw, generator=gen).relu_().to(device).requires_grad_(True)
        logits = torch.randn(b, k, generator=gen).to(device).requires_grad_(True)
        y = torch.randint(0, k, (b,), generator=gen).to(device)
        row: dict[str, Any] = {"B": b, "C": c, "H": hw, "W": hw, "K": k}
        for name, inputs in (("ce", logits), ("mc", feats), ("cc", feats)):
            branch = {"placement": "branch"} if name == "cc" else {}  # CC-Loss on the features
            loss = create_loss(name, context={"num_classes": k, "num_channels": c}, **branch)
            loss = loss.to(device)

            def call(loss=loss, inputs=inputs, y=y) -> None:
                inputs.grad = None
                loss(inputs, y).backward()

            row[f"{name}_ms"] = _median_ms(call, device, repeats, warmup)
        row["mc_over_ce"] = row["mc_ms"] / row["ce_ms"]
        row["cc_over_ce"] = row["cc_ms"] / row["ce_ms"]
        rows.append(row)
        common.log(
            f"  B={b} C={c} {hw}x{hw} K={k}: CE {row['ce_ms']:.3f} ms, MC {row['mc_ms']:.3f} ms "
            f"({row['mc_over_ce']:.1f}x), CC {row['cc_ms']:.3f} ms ({row['cc_over_ce']:.1f}x)"
        )
    return rows
