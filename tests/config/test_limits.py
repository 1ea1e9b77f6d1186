"""Hostile and oversized input: config files and --set values are bounded in size, nesting and
alias expansion; out-of-range numbers, a model or batch too large for memory and a loss that
refuses NaN input are one line ``chanloss: error: ...`` with exit status 2, and nothing is
written. Each case costs milliseconds: it fails before training."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from tiny_config import TINY

from chanloss.cli import main
from chanloss.config import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    MAX_VALUE_CHARS,
    load_config,
    yaml_load,
)

TINY_YAML = yaml.safe_dump(TINY, sort_keys=False)


def laughs(levels: int, width: int = 9) -> str:
    """A "billion laughs" document: ``width ** levels`` strings from a few lines of aliases."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def nested(depth: int, flow: bool = True) -> str:
    if flow:
        return "[" * depth + "1" + "]" * depth
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + "  " * depth + "v: 1\n"


# name -> (config file text or None for TINY, --set items, expected substring)
FILE = "{cfg}"
CASES: dict[str, tuple[str | None, list[str], str]] = {
    "alias-bomb-file": (
        TINY_YAML + laughs(9),
        [],
        f"{FILE}: refused: the YAML is more than {MAX_NODES:,} values once its aliases",
    ),
    "alias-bomb-in-a-section": (
        TINY_YAML.replace("data:\n", "data:\n  options: " + "{}\n", 1) + laughs(7),
        [],
        "more than 100,000 values once its aliases (*name) are expanded",
    ),
    "recursive-alias": (
        TINY_YAML + "loop: &loop [1, *loop]\n",
        [],
        "an alias (*name) refers to a mapping or list that contains it",
    ),
    "recursive-alias-mapping": (
        TINY_YAML + "loop: &loop {a: *loop}\n",
        [],
        "an alias (*name) refers to a mapping or list that contains it",
    ),
    "deep-flow-nesting": (TINY_YAML + "x: " + nested(MAX_DEPTH + 5) + "\n", [], "nested deeper"),
    "very-deep-flow-nesting": (TINY_YAML + "x: " + nested(400_000) + "\n", [], "nested deeper"),
    "deep-nesting-under-recursion-limit": (TINY_YAML + "x: " + nested(120) + "\n", [], "deeper"),
    "deep-block-nesting": (TINY_YAML + nested(MAX_DEPTH + 2, flow=False), [], "nested deeper"),
    "huge-file": (
        TINY_YAML + "#" * MAX_CONFIG_BYTES,
        [],
        f"bytes, expected a YAML config of at most {MAX_CONFIG_BYTES:,}",
    ),
    "set-huge-value": (
        None,
        ["--set", "model.name=" + "x" * (MAX_VALUE_CHARS + 1)],
        f"--set model.name: the value has {MAX_VALUE_CHARS + 1:,} characters",
    ),
    "set-alias-bomb": (
        None,
        ["--set", "data.options=" + "{" + laughs(8).replace("\n", ", ")[:-2] + "}"],
        "--set data.options: the value is more than 100,000 values",
    ),
    "set-deep-value": (None, ["--set", "data.options=" + nested(100)], "nested deeper than 32"),
    "set-very-deep-value": (None, ["--set", "x=" + nested(30_000)], "nested deeper than 32"),
    "set-deep-key": (
        None,
        ["--set", ".".join(["a"] * (MAX_DEPTH + 1)) + "=1"],
        f"more than {MAX_DEPTH} dotted parts",
    ),
    "seed-10e23": (None, ["--set", f"seed={10**23}"], "seed: Input should be less than or equal"),
    "seed-2e32": (None, ["--set", f"seed={2**32}"], "less than or equal to 4294967295"),
    "seed-negative": (None, ["--set", "seed=-1"], "seed: Input should be greater than or equal"),
    "epochs-huge": (None, ["--set", f"epochs={10**30}"], "epochs: Input should be less than"),
    "batch-size-huge": (None, ["--set", f"batch_size={2**64}"], "batch_size: Input should be"),
    "eval-batch-size-huge": (None, ["--set", f"eval_batch_size={2**40}"], "eval_batch_size:"),
    "workers-huge": (None, ["--set", "workers=100000"], "workers: Input should be less than"),
    "eval-every-huge": (None, ["--set", f"eval_every={10**12}"], "eval_every: Input should be"),
    "lr-beyond-float32": (None, ["--set", "optim.lr=1e308"], "optim.lr: Input should be less"),
    "loss-lr-beyond-float32": (None, ["--set", "losses.0.lr=1e39"], "losses.0.lr: Input should"),
    "weight-decay-beyond-float32": (None, ["--set", "optim.weight_decay=1e40"], "weight_decay:"),
    "warmup-infinite": (None, ["--set", "schedule.warmup_epochs=.inf"], "warmup_epochs: Input"),
    "crop-padding-int-huge": (
        None,
        ["--set", f"data.augment.crop_padding={10**11}"],
        "crop_padding: Input should be less than or equal to 65536",
    ),
    "resize-huge": (None, ["--set", f"data.augment.resize={10**20}"], "(at most 65536 pixels)"),
    "timeout-zero": (None, ["--set", "distributed.timeout_minutes=0"], "timeout_minutes:"),
    "timeout-a-year": (None, ["--set", "distributed.timeout_minutes=525600"], "timeout_minutes:"),
    "timeout-nan": (None, ["--set", "distributed.timeout_minutes=.nan"], "timeout_minutes:"),
    "timeout-text": (None, ["--set", "distributed.timeout_minutes=soon"], "timeout_minutes:"),
    "model-too-large": (
        None,
        ["--set", "model.width=1000000"],  # 36 TB of weights
        "model: cannot build 'convnet_small' with",
    ),
    "model-width-10e23": (None, ["--set", f"model.width={10**23}"], "model: "),
    "first-batch-too-large": (
        None,
        ["--set", "data.augment.resize=65536"],  # 128 x 2^32 pixels: 2 TB
        "out of memory; expected a smaller batch_size",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_hostile_or_oversized_input_is_one_line_and_writes_nothing(case, tmp_path, capsys):
    text, extra, expected = CASES[case]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(TINY_YAML if text is None else text)
    out = tmp_path / "run"
    status = main(["train", "-c", str(cfg), "--out", str(out), "-q", *extra])
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert status == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("chanloss: error: "), err[-2000:]
    assert "Traceback" not in err
    assert expected.format(cfg=cfg) in lines[0], lines[0][:500]
    assert len(lines[0]) < 1000
    if case == "first-batch-too-large":  # training had begun: its config, no checkpoint
        assert sorted(p.name for p in out.iterdir()) == [".chanloss.lock", "config.yaml"]
    else:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]  # no run directory


def test_aliases_within_the_limits_still_work():
    text = (
        "base: &opt {lr: 0.05, momentum: 0.5}\n"
        + TINY_YAML.replace("optim:\n  lr: 0.05\n", "optim: *opt\n")
    ).replace("base:", "_unused:")
    raw = yaml_load(text)
    assert raw["optim"] == {"lr": 0.05, "momentum": 0.5}
    raw.pop("_unused")
    assert load_config(raw=raw).optim.momentum == 0.5
    assert yaml_load(laughs(5)) is not None  # 9^5 = 59,049 values: under the limit
    assert yaml_load(nested(MAX_DEPTH - 1)) is not None


@pytest.mark.parametrize(
    "text", ["a: [1, 2]\nb: [1, 2]\n", "a: &x [1]\nb: *x\nc: *x\n", "", "# only a comment\n"]
)
def test_limits_do_not_change_what_plain_yaml_means(text):
    assert yaml_load(text) == yaml.safe_load(text)


# -- a loss that refuses its input (check_finite) --------------------------------------------
def test_check_finite_failure_names_the_loss_epoch_and_step(tmp_path, capsys):
    """A diverging run (lr 1e6) with the second loss checking its input: one line naming it."""
    raw = copy.deepcopy(TINY)
    raw.update(epochs=3, optim={"lr": 1e6, "momentum": 0.9})
    raw["losses"] = [{"name": "ce"}, {"name": "focal", "weight": 0.5}]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    argv = ["train", "-c", str(cfg), "--out", str(tmp_path / "run"), "-q"]
    assert main([*argv, "--set", "losses.1.check_finite=true"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    found = re.fullmatch(
        r"chanloss: error: loss 'focal' \(losses\.1\) refused its input at epoch (\d+), step "
        r"(\d+)/11 \(global step (\d+)\): logits must be finite: found \d+ NaN/inf values of "
        r"\d+; the model diverged: lower optim\.lr, add warm-up or set grad_clip; .*",
        err[0],
    )
    assert found, err[0]
    epoch, step, overall = (int(g) for g in found.groups())
    assert (epoch - 1) * 11 + step == overall
