"""The bad-input corpus, command line: every user error is one clear line and changes nothing.

Each case runs ``chanloss.cli.main`` on a bad config, data tree, checkpoint or argument and
checks: exit status 2, exactly one line on stderr starting ``chanloss: error:`` that names the
offending thing and what was expected, no traceback, and that nothing on disk changed (the case
directory, which holds a finished run, keeps every file's bytes, and no file or directory
appears). The library surface is in test_bad_inputs_losses.py and test_bad_inputs_loading.py,
a run directory that cannot be written in test_bad_inputs_disk.py.
"""

from __future__ import annotations

import io
import pickle
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from bad_input_helpers import (
    Ctx,
    Evil,
    _torch_bytes,
    _tree,
    cifar_tree,
    cub_tree,
    data_config,
    finish_one_epoch_run,
    image_folder,
    png_bytes,
)
from tiny_config import TINY

from chanloss.cli import main


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished one-epoch run (config.yaml, last.pt, best.pt, metrics.csv, summary.json)."""
    return finish_one_epoch_run(tmp_path_factory.mktemp("base"))


# -- the command-line cases ------------------------------------------------------------------
@dataclass
class Case:
    """``build(ctx)`` writes the bad input and returns the argv; ``expect`` are substrings of
    the error line (``{root}``/``{run}`` are filled in)."""

    build: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]


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
