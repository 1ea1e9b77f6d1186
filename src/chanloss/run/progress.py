"""What a run prints and logs while it trains: the progress bar, one line per epoch and the
TensorBoard scalars (only on the main process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from chanloss.config import TrainConfig
from chanloss.run.distributed import is_main_process, log

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency
    tqdm = None

__all__ = ["epoch_bar", "epoch_line", "log_epoch", "log_step", "open_tensorboard", "show_means"]


def epoch_bar(config: TrainConfig, epoch: int, steps: int, verbose: int) -> Any:
    """A progress bar over the steps of ``epoch`` (``None`` when quiet or not the main rank)."""
    if verbose < 1 or tqdm is None or not is_main_process():
        return None
    return tqdm(
        total=steps,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="batch",
        leave=False,
        disable=None,  # off when not a terminal
        dynamic_ncols=True,
    )


def show_means(bar: Any, columns: list[str], sums: Tensor, seen: int, seconds: float) -> None:
    """The epoch's running mean terms, loss and speed after the bar (one host copy)."""
    means = (sums / seen).tolist()
    post = {c: f"{v:.3g}" for c, v in zip([*columns, "loss"], means, strict=True)}
    post["img/s"] = f"{seen / seconds:.0f}"
    bar.set_postfix(post, refresh=False)


def epoch_line(config: TrainConfig, columns: list[str], row: dict[str, Any]) -> str:
    """The plain line printed after an epoch: its terms, loss, accuracies, lr and speed."""
    parts = [f"epoch {row['epoch']}/{config.epochs}"]
    parts += [f"{c} {row[c]:.4f}" for c in columns]
    if len(columns) > 1:
        parts.append(f"loss {row['train_loss']:.4f}")
    shares = [
        f"{c} {row['gshare_' + c]:.3g}" for c in columns if row.get("gshare_" + c) is not None
    ]
    if shares:  # each term's gradient on the feature map / the reference's (grad_share_every)
        parts.append(f"grad share {', '.join(shares)}")
    parts.append(f"train {100 * row['train_acc']:.2f}%")
    if row.get("val_acc") is not None:
        parts.append(f"val {100 * row['val_acc']:.2f}%")
    if config.test_every_epoch and row.get("test_acc") is not None:
        parts.append(f"test {100 * row['test_acc']:.2f}%")
    parts.append(f"lr {row['lr']:.4g}")
    parts.append(f"{row['epoch_time']:.1f}s ({row['samples_per_s']:.0f} img/s)")
    return "  ".join(parts)


def open_tensorboard(config: TrainConfig, out_dir: Path) -> Any:
    """A TensorBoard writer into ``out_dir/tensorboard`` when ``tensorboard: true`` (main rank)."""
    if not config.tensorboard or not is_main_process():
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("tensorboard is not installed; skipping TensorBoard logging (pip install tensorboard)")
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def log_step(writer: Any, columns: list[str], stacked: Tensor, lr: float, step: int) -> None:
    """TensorBoard, every 10 steps: this step's loss terms and total, and the lr."""
    values = stacked.tolist()
    for column, value in zip([*columns, "total"], values, strict=True):
        writer.add_scalar(f"loss/{column}", value, step)
    writer.add_scalar("train/lr", lr, step)


def log_epoch(writer: Any, columns: list[str], row: dict[str, Any], step: int) -> None:
    """TensorBoard, every epoch, at the epoch's last global step (one x axis for all)."""
    tags = {
        "train_loss": "train/epoch_loss",
        "train_acc": "train/accuracy",
        "samples_per_s": "train/samples_per_s",
        "epoch_time": "train/epoch_time_s",
        "skipped_steps": "train/skipped_steps",
        "val_acc": "val/accuracy",
        "test_acc": "test/accuracy",
    }
    tags.update({c: f"loss/epoch_{c}" for c in columns})
    for key, tag in tags.items():
        if row.get(key) is not None:
            writer.add_scalar(tag, row[key], step)
    writer.add_scalar("train/epoch", row["epoch"], step)
    writer.flush()
