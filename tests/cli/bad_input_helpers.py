"""What the bad-input tests build their cases from: a finished run to copy, the case directory
(``Ctx``), snapshots of a directory tree, small image-folder/CUB/CIFAR trees and a pickle that
runs code when it is unpickled (``Evil``)."""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from tiny_config import TINY

from chanloss.config import load_config
from chanloss.run.session import train


class Evil:
    """Unpickling this creates the file ``path`` (``open(path, "w")``)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def finish_one_epoch_run(root: Path) -> Path:
    """A finished one-epoch run in ``root/run`` (config.yaml, last.pt, best.pt, metrics.csv,
    summary.json)."""
    run = root / "run"
    train(load_config(raw=copy.deepcopy(TINY)), run, verbose=0)
    return run


@dataclass
class Ctx:
    """What a case builds its files in: ``root`` (the case directory), ``run`` (a copy of the
    finished run) and ``marker`` (a file that must never be created)."""

    root: Path
    run: Path

    @property
    def marker(self) -> Path:
        return self.root / "PWNED"

    def config(self, raw: dict | None = None, **changes: object) -> str:
        data = copy.deepcopy(TINY if raw is None else raw)
        data.update(copy.deepcopy(changes))
        path = self.root / "cfg.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return str(path)

    def text(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return str(path)

    def folder(self, name: str) -> str:
        path = self.root / name
        path.mkdir()
        return str(path)

    def out(self) -> str:
        return str(self.root / "new-run")

    def train(self, cfg: str) -> list[str]:
        return ["train", "-c", cfg, "--out", self.out()]

    def resume(self, *extra: str, last: bytes | None = None) -> list[str]:
        """``train --resume`` of the run, its last.pt replaced by ``last`` when given."""
        if last is not None:
            (self.run / "last.pt").write_bytes(last)
        return ["train", "--out", str(self.run), "--resume", *extra]

    def edit_last(self, change: Callable[[dict], None], name: str = "last.pt") -> str:
        """Save a modified copy of the run's last.pt as ``name`` (beside the run)."""
        state = torch.load(self.run / "last.pt", weights_only=True)
        change(state)
        path = self.root / name
        torch.save(state, path)
        return str(path)


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


# -- data trees ------------------------------------------------------------------------------
def image_folder(root: Path, *, bad: bytes | None = None, empty_class: bool = False) -> str:
    for split, count in (("train", 3), ("test", 1)):
        for k, colour in enumerate(((255, 0, 0), (0, 0, 255))):
            folder = root / "imgs" / split / f"c{k}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (10, 8), colour).save(folder / f"{i}.png")
    if bad is not None:
        (root / "imgs" / "train" / "c1" / "1.png").write_bytes(bad)
    if empty_class:
        (root / "imgs" / "train" / "c2").mkdir()
    return str(root / "imgs")


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()


def cub_tree(root: Path, *, drop: str | None = None, edit: dict[str, str] | None = None) -> str:
    base = root / "CUB_200_2011"
    classes = ["001.A", "002.B"]
    lines: dict[str, list[str]] = {"images.txt": [], "image_class_labels.txt": []}
    lines["train_test_split.txt"] = []
    for i in range(6):
        rel = f"{classes[i % 2]}/img_{i}.png"
        (base / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (9, 7), (40 * i, 0, 0)).save(base / "images" / rel)
        lines["images.txt"].append(f"{i + 1} {rel}")
        lines["image_class_labels.txt"].append(f"{i + 1} {i % 2 + 1}")
        lines["train_test_split.txt"].append(f"{i + 1} {1 if i < 4 else 0}")
    lines["classes.txt"] = [f"{i + 1} {c}" for i, c in enumerate(classes)]
    for name, rows in lines.items():
        (base / name).write_text("\n".join(rows) + "\n")
    for name, content in (edit or {}).items():
        (base / name).write_text(content)
    if drop is not None:
        (base / drop).unlink()
    return str(root)


def cifar_tree(root: Path, *, test_batch: bytes | None = None, labels: list | None = None) -> str:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels or [0, 1]}
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    (base / "batches.meta").write_bytes(pickle.dumps(names, protocol=2))
    if test_batch is not None:
        (base / "test_batch").write_bytes(test_batch)
    return str(root)


def data_config(ctx: Ctx, name: str, root: str, **options: object) -> str:
    data = {"name": name, "root": root}
    if options:
        data["options"] = options
    return ctx.config(data=data)


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
