"""The command line: train/eval/compare/demo, and one-line user errors with exit status 2."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from chanloss.cli import COMMANDS, main, register_command
from chanloss.config import load_config
from chanloss.experiments.demo import DEMO_CONFIGS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = {
    "model": {"name": "convnet_small", "width": 4, "feature_channels": 20},
    "data": {"name": "digits"},
    "losses": [{"name": "ce"}],
    "optim": {"lr": 0.05},
    "schedule": {"name": "constant"},
    "epochs": 1,
    "batch_size": 128,
    "device": "cpu",
}


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def user_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    # warnings (one line each, e.g. CC-Loss's min_hidden) may come before the error line
    lines = [x for x in captured.err.splitlines() if not x.startswith("chanloss: warning: ")]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("chanloss: error: ")
    assert "Traceback" not in captured.err
    return lines[0]


def test_user_errors_are_one_line_with_status_2(tmp_path, capsys):
    bad = write(tmp_path / "bad.yaml", {**TINY, "optim": {"lr": "fast", "mom": 0.9}})
    line = user_error(capsys, ["train", "-c", str(bad), "--out", str(tmp_path / "r")])
    assert "optim.lr: Input should be a valid number, got 'fast'" in line
    assert "optim.mom: unknown key" in line
    assert "config file not found" in user_error(capsys, ["train", "-c", str(tmp_path / "no.yaml")])
    good = write(tmp_path / "good.yaml", TINY)
    assert "--set expects KEY=VALUE" in user_error(
        capsys, ["train", "-c", str(good), "--set", "epochs"]
    )
    assert "epochs: Input should be a valid integer" in user_error(
        capsys, ["train", "-c", str(good), "--set", "epochs=many"]
    )
    assert "--resume needs --out DIR" in user_error(capsys, ["train", "-c", str(good), "--resume"])
    assert "train needs -c CONFIG" in user_error(capsys, ["train"])
    assert "a command is required" in user_error(capsys, [])
    assert "invalid choice: 'fit'" in user_error(capsys, ["fit"])
    assert "unrecognized arguments: --epochs" in user_error(capsys, ["train", "--epochs", "3"])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    assert "junk.pt is not a readable chanloss checkpoint" in user_error(
        capsys, ["eval", str(junk)]
    )
    assert "checkpoint not found" in user_error(capsys, ["eval", str(tmp_path / "none.pt")])
    assert "cannot resume" in user_error(
        capsys, ["train", "-c", str(good), "--out", str(tmp_path / "empty"), "--resume"]
    )


def test_train_resume_and_eval_from_the_command_line(tmp_path, capsys):
    cfg = write(tmp_path / "tiny.yaml", TINY)
    run = tmp_path / "run"
    assert main(["train", "-c", str(cfg), "--out", str(run), "--set", "optim.lr=0.04"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1  ce " in out and "final test accuracy" in out
    assert load_config(run / "config.yaml").optim.lr == 0.04
    # extend the finished run to 2 epochs; the config comes from the run directory
    assert main(["train", "--out", str(run), "--resume", "--set", "epochs=2", "-q"]) == 0
    out = capsys.readouterr().out
    assert "resuming" not in out and "final test accuracy" in out
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    other = write(tmp_path / "other.yaml", {**TINY, "losses": [{"name": "ce"}, {"name": "cc"}]})
    line = user_error(capsys, ["train", "-c", str(other), "--out", str(run), "--resume"])
    assert "was trained with losses [ce], but the config has losses [ce, cc]" in line

    assert main(["eval", str(run / "best.pt"), "--out", str(tmp_path / "ev")]) == 0
    assert "top-1" in capsys.readouterr().out
    result = json.loads((tmp_path / "ev" / "test" / "eval.json").read_text())
    assert result["epoch"] == 2 and 0.0 <= result["top1"] <= result["top5"] <= 1.0


def test_compare_from_the_command_line(tmp_path, capsys):
    a = write(tmp_path / "a.yaml", TINY)
    b = write(tmp_path / "b.yaml", {**TINY, "losses": [{"name": "ce"}, {"name": "cc"}]})
    out = tmp_path / "cmp"
    argv = ["compare", "-c", str(a), "-c", str(b), "--seeds", "1", "--out", str(out)]
    assert main([*argv, "--set", "batch_size=256"]) == 0
    printed = capsys.readouterr().out
    assert "| a | convnet_small | ce |" in printed and "| b | convnet_small | ce + cc |" in printed
    assert (out / "results.csv").exists() and (out / "b" / "seed0" / "summary.json").exists()
    assert load_config(out / "a" / "seed0" / "config.yaml").batch_size == 256
    assert "--seeds must be at least 1" in user_error(capsys, [*argv[:-4], "--seeds", "0"])


def test_demo_runs_ce_and_mc_and_says_what_the_result_means(tmp_path, capsys):
    # two runs at a time in worker processes (the demo's default); compare's own tests cover
    # the runs in this process
    argv = ["demo", "--out", str(tmp_path / "demo"), "--seeds", "1", "--jobs", "2"]
    overrides = [
        "data.options.train_per_class=12",
        "data.options.test_per_class=4",
        "epochs=1",
        "model.width=4",
        "batch_size=60",
    ]
    assert main([*argv, *[x for o in overrides for x in ("--set", o)]]) == 0
    printed = capsys.readouterr().out
    for label in DEMO_CONFIGS:
        assert f"| {label} |" in printed
        assert f"{label} seed 0 epoch 1/1" in printed  # a plain line per epoch (not a terminal)
    # the overall progress: every epoch line counts the epochs of all runs, with the time left
    assert "all runs: 1/2 epochs (50%)" in printed and "all runs: 2/2 epochs (100%)" in printed
    assert "left" in printed.split("all runs: 1/2 epochs")[1].splitlines()[0]
    assert "one seed each, so no error bar" in printed
    assert "MC-Loss - CE: " in printed and "test-accuracy points after 1 epoch," in printed
    assert "Caveats:" in printed and "97.27" in printed
    assert (tmp_path / "demo" / "accuracy.png").exists()


def test_demo_configs_are_the_shipped_demo_configs():
    for label, raw in DEMO_CONFIGS.items():
        assert load_config(CONFIGS / f"{label}.yaml") == load_config(raw=copy.deepcopy(raw)), label
    mc = load_config(raw=copy.deepcopy(DEMO_CONFIGS["demo-mc"])).losses[1]
    assert (mc.name, mc.params()["alpha"], mc.params()["beta"]) == ("mc", 1.5, 1.0)


def test_commands_can_be_registered():
    assert list(COMMANDS)[:4] == ["train", "eval", "compare", "demo"]
    with pytest.raises(ValueError, match="command 'train' is already registered"):
        register_command("train", "again", lambda p: None)(lambda a: 0)


def test_python_dash_m_reports_a_bad_config_in_one_line(tmp_path):
    bad = write(tmp_path / "bad.yaml", {**TINY, "epochz": 3})
    proc = subprocess.run(
        [sys.executable, "-m", "chanloss", "train", "-c", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"chanloss: error: {bad}: epochz: unknown key (did you mean 'epochs'?)"
    ]
    assert proc.stdout == ""


@pytest.mark.parametrize("world_size", [None, "2"])
def test_python_dash_m_flushes_output_and_keeps_the_status_under_torchrun(tmp_path, world_size):
    """Under torchrun the entry point ends with os._exit (see chanloss.cli.entry): what was
    printed still arrives, on both streams, and the exit status is main()'s."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "PYTHONUNBUFFERED")}
    if world_size:
        env["WORLD_SIZE"] = world_size
    script = (
        "import sys, chanloss.cli as cli\n"
        "def fake_main():\n"
        "    print('to stdout'); print('to stderr', file=sys.stderr); return 3\n"
        "cli.main = fake_main\n"
        "cli.entry()\n"
    )
    piped = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert (piped.returncode, piped.stdout, piped.stderr) == (3, "to stdout\n", "to stderr\n")
    missing = tmp_path / "missing.yaml"
    failed = subprocess.run(
        [sys.executable, "-m", "chanloss", "train", "-c", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert failed.returncode == 2
    assert failed.stderr.startswith("chanloss: error: ") and str(missing) in failed.stderr
