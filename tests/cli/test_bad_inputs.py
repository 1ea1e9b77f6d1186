"""The bad-input corpus: every user error at the public surface is one clear line.

Command-line cases run ``chanloss.cli.main`` on a bad config, data tree, checkpoint or
argument and check: exit status 2, exactly one line on stderr starting ``chanloss: error:``
that names the offending thing and what was expected, no traceback, and that nothing on disk
changed (the case directory, which holds a finished run, keeps every file's bytes, and no file
or directory appears). Library cases call the loss constructors and losses, the data loaders
and ``load_checkpoint`` directly and check the ``ValueError`` message.
"""

from __future__ import annotations

import ast
import copy
import errno
import inspect
import io
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tiny_config import TINY

from chanloss.cli import main
from chanloss.config import load_config
from chanloss.data import DatasetError, TensorImageDataset, build_datasets
from chanloss.losses import LOSSES, create_loss
from chanloss.run.checkpoint import CheckpointError, load_checkpoint
from chanloss.run.session import train


class Evil:
    """Unpickling this creates the file ``path`` (``open(path, "w")``)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# -- the case directory ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished one-epoch run (config.yaml, last.pt, best.pt, metrics.csv, summary.json)."""
    run = tmp_path_factory.mktemp("base") / "run"
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


# -- the command-line cases ------------------------------------------------------------------
@dataclass
class Case:
    """``build(ctx)`` writes the bad input and returns the argv; ``expect`` are substrings of
    the error line (``{root}``/``{run}`` are filled in)."""

    build: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _empty_zip() -> bytes:
    buf = io.BytesIO()
    zipfile.ZipFile(buf, "w").close()
    return buf.getvalue()


def _shrink_first_weight(state: dict) -> None:
    first = next(iter(state["model"]))
    state["model"][first] = torch.zeros(3)


CLI_CASES: dict[str, Case] = {
    # -- config files
    "config-missing": Case(
        lambda c: c.train(str(c.root / "nope.yaml")),
        ("config file not found: {root}/nope.yaml",),
    ),
    "config-zero-bytes": Case(
        lambda c: c.train(c.text("empty.yaml", b"")),
        ("empty.yaml is empty", "expected a mapping with the keys model, data, losses"),
    ),
    "config-truncated-yaml": Case(
        lambda c: c.train(c.text("cut.yaml", "model: {name: convnet_small, width: 4\n")),
        ("cut.yaml, line 2, column 1: invalid YAML: while parsing a flow mapping (from line 1",),
    ),
    "config-binary": Case(
        lambda c: c.train(c.text("bin.yaml", b"\x89PNG\r\n\x1a\n\x00\xff\xfe")),
        ("bin.yaml", "not a UTF-8 text file", "expected a YAML config"),
    ),
    "config-is-a-list": Case(
        lambda c: c.train(c.text("list.yaml", "- model\n- data\n")),
        ("list.yaml: expected a mapping of keys, got list",),
    ),
    "config-is-a-directory": Case(
        lambda c: c.train(str(c.root)),
        ("config file {root} is a directory, expected a YAML file",),
    ),
    "config-typo-key": Case(
        lambda c: c.train(c.config(epochz=3)), ("epochz: unknown key (did you mean 'epochs'?)",)
    ),
    "config-typo-nested-key": Case(
        lambda c: c.train(c.config(optim={"lrr": 0.1})),
        ("optim.lrr: unknown key (did you mean 'lr'?)",),
    ),
    "config-string-for-number": Case(
        lambda c: c.train(c.config(optim={"lr": "fast"})),
        ("optim.lr: Input should be a valid number, got 'fast'",),
    ),
    "config-number-out-of-range": Case(
        lambda c: c.train(c.config(epochs=0)),
        ("epochs: Input should be greater than or equal to 1, got 0",),
    ),
    "config-nan-lr": Case(
        lambda c: c.train(c.text("nan.yaml", yaml.safe_dump(TINY) + "grad_clip: .nan\n")),
        ("grad_clip: Input should be greater than 0, got nan",),
    ),
    "config-missing-section": Case(
        lambda c: c.train(c.config({k: v for k, v in TINY.items() if k != "losses"})),
        ("losses: required key is missing",),
    ),
    "config-bad-device": Case(
        lambda c: c.train(c.config(device="tpu")),
        ("device: device must be auto, cpu, cuda or cuda:N, got 'tpu'",),
    ),
    "config-cuda-device-missing": Case(
        lambda c: c.train(c.config(device="cuda:99")),
        ("device: 'cuda:99' was asked for but",),
    ),
    "config-bad-val-fraction": Case(
        lambda c: c.train(c.config(data={"name": "digits", "val_fraction": 1.5})),
        ("data.val_fraction: Input should be less than 1, got 1.5",),
    ),
    # -- models and losses in the config
    "model-unknown": Case(
        lambda c: c.train(c.config(model={"name": "resnet21"})),
        ("unknown model 'resnet21' (did you mean 'resnet20'?)",),
    ),
    "model-option-typo": Case(
        lambda c: c.train(c.config(model={"name": "convnet_small", "widht": 4})),
        ("model 'convnet_small' has no option 'widht' (did you mean 'width'?)",),
    ),
    "model-option-bad-value": Case(
        lambda c: c.train(c.config(model={"name": "convnet_small", "width": -1})),
        ("model: width must be in [1, inf), got -1",),
    ),
    "model-option-string": Case(
        lambda c: c.train(c.config(model={"name": "convnet_small", "width": "4"})),
        ("model: width must be an integer, got '4'",),
    ),
    "loss-unknown": Case(
        lambda c: c.train(c.config(losses=[{"name": "cee"}])),
        ("losses.0: unknown loss 'cee' (did you mean 'ce'?); expected one of",),
    ),
    "loss-param-typo": Case(
        lambda c: c.train(c.config(losses=[{"name": "ce"}, {"name": "cc", "reductoin": 4}])),
        ("loss 'cc' has no parameter 'reductoin' (did you mean 'reduction'?)",),
    ),
    "loss-param-bad-value": Case(
        lambda c: c.train(c.config(losses=[{"name": "ce"}, {"name": "cc", "reduction": 0}])),
        ("losses.1 (cc): reduction must be",),
    ),
    "loss-param-string": Case(
        lambda c: c.train(c.config(losses=[{"name": "mc", "alpha": "high"}])),
        ("losses.0 (mc): alpha must be a real number, got 'high'",),
    ),
    "loss-weight-negative": Case(
        lambda c: c.train(c.config(losses=[{"name": "ce", "weight": -1}])),
        ("losses.0.weight: Input should be greater than or equal to 0",),
    ),
    "loss-too-few-channels": Case(
        lambda c: c.train(
            c.config(
                model={"name": "convnet_small", "width": 4, "feature_channels": 5},
                losses=[{"name": "mc"}],
            )
        ),
        ("losses.0 (mc):", "10"),
    ),
    # -- --set overrides and arguments
    "set-no-equals": Case(
        lambda c: [*c.train(c.config()), "--set", "epochs"],
        ("--set expects KEY=VALUE with a dotted KEY, got 'epochs'",),
    ),
    "set-string-for-int": Case(
        lambda c: [*c.train(c.config()), "--set", "epochs=many"],
        ("epochs: Input should be a valid integer, got 'many'",),
    ),
    "set-index-out-of-range": Case(
        lambda c: [*c.train(c.config()), "--set", "losses.5.weight=2"],
        ("--set losses.5.weight: index 5 is out of range for losses (it has 1 entries",),
    ),
    "args-unknown-command": Case(lambda c: ["fit"], ("invalid choice: 'fit'",)),
    "args-unknown-option": Case(
        lambda c: ["train", "--epochs", "3"], ("unrecognized arguments: --epochs 3",)
    ),
    "args-compare-zero-seeds": Case(
        lambda c: ["compare", "-c", c.config(), "--seeds", "0", "--out", c.out()],
        ("--seeds must be at least 1",),
    ),
    "args-analyze-max-samples": Case(
        lambda c: ["analyze", str(c.run / "last.pt"), "--out", c.out(), "--max-samples", "2"],
        ("--max-samples: must be an integer >= 3, got '2'",),
    ),
    # -- data sets
    "data-unknown": Case(
        lambda c: c.train(c.config(data={"name": "cifar11"})),
        ("unknown dataset 'cifar11' (did you mean 'cifar10'?)",),
    ),
    "data-option-typo": Case(
        lambda c: c.train(data_config(c, "image_folder", "x", image_sise=8)),
        ("dataset 'image_folder' has no option 'image_sise' (did you mean 'image_size'?)",),
    ),
    "data-path-missing": Case(
        lambda c: c.train(data_config(c, "image_folder", str(c.root / "nowhere"), image_size=8)),
        ("image_folder: root '{root}/nowhere' is not a directory",),
    ),
    "data-root-missing": Case(
        lambda c: c.train(c.config(data={"name": "cub200"})),
        ("dataset 'cub200' needs root=<directory holding CUB_200_2011/>, got None",),
    ),
    "image-folder-unreadable-image": Case(
        lambda c: c.train(
            data_config(c, "image_folder", image_folder(c.root, bad=b"not a png"), image_size=8)
        ),
        ("image_folder: cannot read image {root}/imgs/train/c1/1.png",),
    ),
    "image-folder-zero-byte-image": Case(
        lambda c: c.train(
            data_config(c, "image_folder", image_folder(c.root, bad=b""), image_size=8)
        ),
        ("image_folder: cannot read image {root}/imgs/train/c1/1.png",),
    ),
    "image-folder-truncated-image": Case(
        lambda c: c.train(
            data_config(c, "image_folder", image_folder(c.root, bad=png_bytes()[:60]), image_size=8)
        ),
        ("image_folder: cannot read image {root}/imgs/train/c1/1.png",),
    ),
    "image-folder-empty-class": Case(
        lambda c: c.train(
            data_config(c, "image_folder", image_folder(c.root, empty_class=True), image_size=8)
        ),
        ("class directory {root}/imgs/train/c2 holds no image files (expected .png",),
    ),
    "cub-missing-index-file": Case(
        lambda c: c.train(
            data_config(c, "cub200", cub_tree(c.root, drop="train_test_split.txt"), image_size=8)
        ),
        ("train_test_split.txt: file not found (expected lines '<image_id> <0|1>')",),
    ),
    "cub-label-out-of-range": Case(
        lambda c: c.train(
            data_config(
                c,
                "cub200",
                cub_tree(c.root, edit={"image_class_labels.txt": "1 1\n2 2\n3 7\n4 1\n5 2\n6 1\n"}),
                image_size=8,
            )
        ),
        ("image_class_labels.txt: image id 3 has class id 7, expected 1..2",),
    ),
    "cub-truncated-index-line": Case(
        lambda c: c.train(
            data_config(
                c,
                "cub200",
                cub_tree(c.root, edit={"images.txt": "1 001.A/img_0.png\n2 002.B/img_1.png\n3"}),
                image_size=8,
            )
        ),
        ("images.txt: line 3: expected '<image_id> <image_path>', got '3'",),
    ),
    "cub-zero-byte-index": Case(
        lambda c: c.train(
            data_config(c, "cub200", cub_tree(c.root, edit={"classes.txt": ""}), image_size=8)
        ),
        ("classes.txt: no records (expected lines '<class_id> <class_name>')",),
    ),
    "cifar-zero-byte-batch": Case(
        lambda c: c.train(data_config(c, "cifar10", cifar_tree(c.root, test_batch=b""))),
        ("cifar10: {root}/cifar-10-batches-py/test_batch: cannot unpickle",),
    ),
    "cifar-label-out-of-range": Case(
        lambda c: c.train(data_config(c, "cifar10", cifar_tree(c.root, labels=[0, 12]))),
        ("data_batch_1: labels must be in [0, 10), got [0, 12]",),
    ),
    "cifar-malicious-pickle": Case(
        lambda c: c.train(
            data_config(c, "cifar10", cifar_tree(c.root, test_batch=pickle.dumps(Evil(c.marker))))
        ),
        (
            "test_batch: refused to unpickle io.open (a pickle can run code)",
            "expected a pickle of plain data",
        ),
    ),
    # -- the output directory
    "out-under-a-file": Case(
        lambda c: ["train", "-c", c.config(), "--out", c.text("afile", "x") + "/run"],
        ("cannot create the run directory {root}/afile/run", "expected a writable directory"),
    ),
    "out-holds-a-run": Case(
        lambda c: ["train", "-c", c.config(), "--out", str(c.run)],
        ("{run} already holds a run (last.pt); use --resume or another --out",),
    ),
    # -- checkpoints: resume
    "resume-without-out": Case(
        lambda c: ["train", "-c", c.config(), "--resume"], ("--resume needs --out DIR",)
    ),
    "resume-no-last": Case(
        lambda c: ["train", "-c", c.config(), "--out", str(c.root), "--resume"],
        ("cannot resume: {root}/last.pt does not exist",),
    ),
    "resume-truncated-checkpoint": Case(
        lambda c: c.resume(last=(c.run / "last.pt").read_bytes()[:3000]),
        ("{run}/last.pt is not a readable chanloss checkpoint (truncated or not a torch file",),
    ),
    "resume-zero-byte-checkpoint": Case(
        lambda c: c.resume(last=b""),
        ("{run}/last.pt is not a readable chanloss checkpoint (the file is empty)",),
    ),
    "resume-other-model": Case(
        lambda c: c.resume("--set", "model.width=8"),
        ("last.pt was trained with model convnet_small", "but the config has model"),
    ),
    "resume-other-loss": Case(
        lambda c: c.resume("--set", "losses.1.name=cc"),
        ("trained with losses [ce], but the config has losses [ce, cc]",),
    ),
    "resume-malicious-pickle": Case(
        lambda c: c.resume(last=pickle.dumps(Evil(c.marker), protocol=2)),
        ("{run}/last.pt: refused to load", "(it would import and call io.open)"),
    ),
    "resume-malicious-pickle-protocol-5": Case(
        lambda c: c.resume(last=pickle.dumps(Evil(c.marker), protocol=5)),
        ("{run}/last.pt is not a readable chanloss checkpoint", "nothing in it was run"),
    ),
    "resume-torch-save-of-objects": Case(
        lambda c: c.resume(
            last=_torch_bytes({"format": "chanloss-checkpoint", "evil": Evil(c.marker)})
        ),
        ("{run}/last.pt: refused to load", "(it would import and call io.open)"),
    ),
    "resume-weights-of-another-shape": Case(
        lambda c: [c.edit_last(_shrink_first_weight, "run/last.pt"), *c.resume()][1:],
        ("last.pt does not fit this run", "size mismatch"),
    ),
    # -- checkpoints: eval
    "eval-missing": Case(
        lambda c: ["eval", str(c.root / "no.pt")], ("checkpoint not found: {root}/no.pt",)
    ),
    "eval-directory-without-checkpoints": Case(
        lambda c: ["eval", c.folder("empty")],
        (
            "checkpoint {root}/empty is a directory with neither best.pt nor last.pt",
            "expected a run's last.pt or best.pt",
        ),
    ),
    "eval-plain-torch-file": Case(
        lambda c: ["eval", c.text("plain.pt", _torch_bytes({"model": {}}))],
        ("plain.pt is not a chanloss checkpoint (no 'chanloss-checkpoint' marker)",),
    ),
    "eval-zip-not-torch": Case(
        lambda c: ["eval", c.text("z.pt", _empty_zip())],
        ("z.pt is not a readable chanloss checkpoint",),
    ),
    "eval-other-version": Case(
        lambda c: ["eval", c.edit_last(lambda s: s.update(version=7), "v7.pt")],
        ("v7.pt has checkpoint version 7, expected 1",),
    ),
    "eval-no-config": Case(
        lambda c: ["eval", c.edit_last(lambda s: s.pop("config"), "nocfg.pt")],
        ("nocfg.pt holds no config",),
    ),
    "eval-bad-stored-config": Case(
        lambda c: [
            "eval",
            c.edit_last(lambda s: s["config"]["model"].update(name="resnet21"), "badcfg.pt"),
        ],
        ("badcfg.pt (stored config): model: unknown model 'resnet21'",),
    ),
    "eval-weights-of-another-model": Case(
        lambda c: [
            "eval",
            c.edit_last(lambda s: s["config"]["model"].update(width=8), "other.pt"),
        ],
        ("other.pt does not fit its own config", "size mismatch"),
    ),
    "eval-missing-split": Case(
        lambda c: ["eval", str(c.run / "last.pt"), "--split", "val", "--out", c.out()],
        ("split 'val' is not available; the run has ['test']",),
    ),
    "eval-malicious-pickle": Case(
        lambda c: ["eval", c.text("evil.pt", pickle.dumps(Evil(c.marker), protocol=2))],
        ("evil.pt: refused to load", "io.open"),
    ),
}


@pytest.mark.parametrize("case", list(CLI_CASES), ids=list(CLI_CASES))
def test_cli_user_error_is_one_line_and_changes_nothing(case, finished_run, tmp_path, capsys):
    spec = CLI_CASES[case]
    ctx = Ctx(root=tmp_path, run=tmp_path / "run")
    shutil.copytree(finished_run, ctx.run)
    argv = spec.build(ctx)
    before = _tree(tmp_path)
    capsys.readouterr()

    status = main(argv)

    captured = capsys.readouterr()
    # warnings (one line each, e.g. CC-Loss's min_hidden) may come before the error line
    lines = [x for x in captured.err.splitlines() if not x.startswith("chanloss: warning: ")]
    assert status == 2, captured
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("chanloss: error: "), lines[0]
    assert "Traceback" not in captured.err and "\x1b[" not in captured.err
    for text in spec.expect:
        text = text.format(root=tmp_path, run=ctx.run)
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert _tree(tmp_path) == before, "a failed command changed files"
    assert not ctx.marker.exists(), "an untrusted file ran code"


# -- the library surface: every loss constructor and call ------------------------------------
CONTEXT = {"num_classes": 5, "num_channels": 10, "embedding_dim": 6}
# One bad constructor argument per loss: (parameter, bad value, expected in the message).
BAD_PARAMS: dict[str, tuple[str, object, str]] = {
    "arcface": ("margin", -0.5, "margin must be"),
    "cc": ("reduction", 0, "reduction must be"),
    "center": ("embedding_dim", "6", "embedding_dim must be an integer, got '6'"),
    "competing_ratio": ("beta", float("nan"), "beta must be a finite number"),
    "cosface": ("scale", 0.0, "scale must be"),
    "ce": ("weight", "one", "weight must be a real number, got 'one'"),
    "em_softmax": ("num_classifiers", 0, "num_classifiers must be"),
    "focal": ("gamma", -1.0, "gamma must be"),
    "label_smoothing": ("smoothing", 1.5, "smoothing must be"),
    "lgm": ("covariance", "full-ish", "covariance must be one of"),
    "lsoftmax": ("margin", 0, "margin must be"),
    "mc": ("pool", "median", "pool must be one of"),
    "sphereface": ("margin", 2.5, "margin must be an integer"),
}


def _input_shape(name: str) -> tuple[int, ...]:
    consumes = LOSSES[name].consumes
    if consumes == "features":
        return (4, CONTEXT["num_channels"], 3, 3)
    if consumes == "embedding":
        return (4, CONTEXT["embedding_dim"])
    if consumes == "attention":  # CC-Loss's gate placement: the gate's (B, C) attention
        return (4, CONTEXT["num_channels"])
    return (4, CONTEXT["num_classes"])


def test_the_corpus_covers_every_registered_loss():
    assert set(BAD_PARAMS) == set(LOSSES) - {n for n in LOSSES if n.startswith("test_")}


@pytest.mark.parametrize("name", sorted(BAD_PARAMS))
def test_loss_constructor_rejects_a_bad_argument(name):
    param, value, message = BAD_PARAMS[name]
    assert param in inspect.signature(LOSSES[name].__init__).parameters
    with pytest.raises(ValueError) as info:
        create_loss(name, context=CONTEXT, **{param: value})
    assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=f"loss '{name}' has no parameter 'nonsense'"):
        create_loss(name, context=CONTEXT, nonsense=1)


BAD_CALLS: dict[str, Callable[[tuple[int, ...]], tuple[object, object, str]]] = {
    # (inputs, labels, expected in the message) for an input shape
    "wrong-rank": lambda s: (torch.randn(*s, 2), torch.zeros(4, dtype=torch.long), "dimensions"),
    "wrong-type": lambda s: (np.zeros(s, np.float32), torch.zeros(4, dtype=torch.long), "Tensor"),
    "integer-input": lambda s: (
        torch.zeros(s, dtype=torch.long),
        torch.zeros(4, dtype=torch.long),
        "floating-point",
    ),
    "label-out-of-range": lambda s: (
        torch.randn(s),
        torch.tensor([0, 1, 2, CONTEXT["num_classes"]]),
        f"labels must be in [0, {CONTEXT['num_classes']}), got a label {CONTEXT['num_classes']}",
    ),
    "negative-label": lambda s: (
        torch.randn(s),
        torch.tensor([0, -1, 2, 3]),
        "labels must be in [0, 5), got a label -1",
    ),
    "float-labels": lambda s: (torch.randn(s), torch.zeros(4), "labels must be an integer tensor"),
    "labels-wrong-length": lambda s: (
        torch.randn(s),
        torch.zeros(3, dtype=torch.long),
        "labels must have shape (4,) to match the batch, got (3,)",
    ),
    "empty-batch": lambda s: (
        torch.randn(0, *s[1:]),
        torch.zeros(0, dtype=torch.long),
        "empty batch",
    ),
}


@pytest.mark.parametrize("call", list(BAD_CALLS))
@pytest.mark.parametrize("name", sorted(BAD_PARAMS))
def test_loss_call_rejects_bad_inputs(name, call):
    loss = create_loss(name, context=CONTEXT)
    inputs, labels, message = BAD_CALLS[call](_input_shape(name))
    if name == "cc" and "labels must be in" in message:
        # CC-Loss has no class count: any label >= 0 is a class; a negative one is an error
        if call == "label-out-of-range":
            assert torch.isfinite(loss(inputs, labels))
            return
        message = "labels must be class indices >= 0, got a label -1"
    with pytest.raises(ValueError) as info:
        loss(inputs, labels)
    assert message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_loss_call_rejects_non_finite_input_when_asked():
    for name in sorted(BAD_PARAMS):
        loss = create_loss(name, context=CONTEXT, check_finite=True)
        x = torch.randn(_input_shape(name))
        x.view(-1)[3] = float("nan")
        with pytest.raises(ValueError, match=r"must be finite: found 1 NaN/inf values"):
            loss(x, torch.tensor([0, 1, 2, 3]))


# -- the library surface: data loaders and checkpoints ---------------------------------------
def test_data_loaders_reject_bad_arguments(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"images must be a float32 \(in \[0, 1\]\) or uint8 \(0..255\) tensor "
        r"\(N, C, H, W\), got list",
    ):
        TensorImageDataset([[0.0]], torch.zeros(1, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"labels must be an int64 tensor \(N,\), got \(2,\) torch.float32"
    ):
        TensorImageDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="got 2 images and 3 labels"):
        TensorImageDataset(torch.zeros(2, 1, 2, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="seed must be an integer, got '1'"):
        build_datasets("digits", seed="1")
    with pytest.raises(ValueError, match=r"val_fraction must be a finite number in \[0, 0.99\]"):
        build_datasets("digits", val_fraction=-0.1)
    with pytest.raises(ValueError, match="image_size must be in"):
        build_datasets("image_folder", root=image_folder(tmp_path), image_size=0)
    with pytest.raises(ValueError, match="colour must be one of 'auto', 'RGB', 'L', got 'CMYK'"):
        build_datasets("image_folder", root=str(tmp_path / "imgs"), colour="CMYK")


def test_load_checkpoint_refuses_code_and_names_the_file(tmp_path):
    marker = tmp_path / "PWNED"
    cases = {
        "proto2.pt": (pickle.dumps({"x": Evil(marker)}, protocol=2), "refused to load"),
        "proto5.pt": (pickle.dumps({"x": Evil(marker)}), "is not a readable chanloss checkpoint"),
        "torch.pt": (
            _torch_bytes({"format": "chanloss-checkpoint", "version": 1, "x": Evil(marker)}),
            "refused to load",
        ),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name}") and message in str(info.value)
    assert not marker.exists()
    # The same file runs the code when unpickled without weights_only (the test is honest).
    torch.load(tmp_path / "torch.pt", weights_only=False)
    assert marker.exists()


def test_cifar_pickles_of_numpy_1_and_2_load_but_code_is_refused(tmp_path):
    """Real CIFAR files were pickled by numpy 1 (``numpy.core.multiarray``); numpy 2 writes
    ``numpy._core``; both are plain data. A pickle naming anything else never runs."""
    root = Path(cifar_tree(tmp_path / "np2"))
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    old = batch.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old
    batch.write_bytes(old)
    bundle = build_datasets("cifar10", root=str(root))
    assert len(bundle.train) == 10 and bundle.class_names[3] == "c3"
    marker = tmp_path / "PWNED"
    batch.write_bytes(pickle.dumps({b"data": Evil(marker), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(DatasetError, match=r"data_batch_1: refused to unpickle io.open"):
        build_datasets("cifar10", root=str(root))
    assert not marker.exists()


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                found.append((func.id, node))
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                found.append((f"{func.value.id}.{func.attr}", node))
    return found


def test_untrusted_inputs_are_never_executed():
    """Checkpoints, configs and data files are data: in the library and the benchmarks every
    torch.load has weights_only=True, YAML goes through a SafeLoader, pickle only through the
    restricted unpickler, and nothing calls eval or exec."""
    root = Path(__file__).resolve().parents[2]
    seen = set()
    files = sorted([*(root / "src").rglob("*.py"), *(root / "benchmarks").rglob("*.py")])
    for path in files:
        for name, call in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(root)}:{call.lineno}"
            keywords = {k.arg: k.value for k in call.keywords}
            seen.add(name)
            if name == "torch.load":
                flag = keywords.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, where
            elif name in ("yaml.load", "yaml.load_all"):
                loader = keywords.get("Loader")
                assert isinstance(loader, ast.Name) and loader.id == "_Loader", where
            assert name not in ("eval", "exec", "yaml.unsafe_load", "yaml.full_load"), where
            assert name not in ("pickle.load", "pickle.loads", "torch.jit.load"), where
            assert name not in ("yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader"), where
    # config.yaml_load runs its _Loader (a SafeLoader) step by step to check the limits
    assert "torch.load" in seen and ("yaml.load" in seen or "_Loader" in seen)
    from chanloss.config import _Loader

    assert issubclass(_Loader, yaml.SafeLoader)


# -- the output directory: unwritable, full ----------------------------------------------------
# Tests run as root, where a read-only mode does not stop writes: the failures are simulated.
def _fail(err: int, *, after: int = 0) -> Callable[..., None]:
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(err, os.strerror(err))
        real(fd)

    return fsync


@pytest.mark.parametrize(
    ("patch", "reason"),
    [("mkstemp", "Permission denied"), ("fsync", "No space left on device")],
)
def test_an_unwritable_run_directory_is_reported_before_training(
    patch, reason, finished_run, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg = Ctx(tmp_path, run).config()
    before = _tree(tmp_path)
    if patch == "mkstemp":
        monkeypatch.setattr(
            tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(PermissionError(13, reason))
        )
    else:
        monkeypatch.setattr(os, "fsync", _fail(errno.ENOSPC))
    for out, argv in (
        (tmp_path / "new", ["train", "-c", cfg, "--out", str(tmp_path / "new")]),
        (run, ["train", "--out", str(run), "--resume"]),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        expected = f"cannot write in the run directory {out} ({reason}); expected a writable"
        assert len(err) == 1 and expected in err[0], err
    assert _tree(tmp_path) == before  # the new directory was removed again, the run untouched


def test_too_little_free_space_is_reported_before_training(tmp_path, monkeypatch, capsys):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    cfg = Ctx(tmp_path, tmp_path).config()
    assert main(["train", "-c", cfg, "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "not enough free space in the run directory" in err[0], err
    assert "0.0 MiB free, expected at least" in err[0]
    assert not (tmp_path / "new").exists()


def test_a_disk_that_fills_up_mid_run_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    # fsync calls: the probe, last.pt of epoch 1, then last.pt of epoch 2 fails
    monkeypatch.setattr(os, "fsync", _fail(errno.ENOSPC, after=2))
    run = tmp_path / "run"
    cfg = Ctx(tmp_path, run).config(epochs=3)
    assert main(["train", "-c", cfg, "--out", str(run), "-q"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"chanloss: error: cannot write checkpoint {run / 'last.pt'}: No space left on device; "
        "the previous last.pt (if any) is unchanged"
    ]
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert main(["train", "--out", str(run), "--resume", "-q"]) == 0  # space is back
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
