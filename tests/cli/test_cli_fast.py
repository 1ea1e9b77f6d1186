"""The command line without torch: ``--help``, ``chanloss config`` and ``--set`` suggestions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from tiny_config import TINY

from chanloss.cli import COMMANDS, main
from chanloss.config import ConfigError, load_config

SRC = Path(__file__).resolve().parents[2] / "src"

_HELP_PROBE = """
import contextlib, io, json, sys
from chanloss.cli import COMMANDS, main
texts = {}
for argv in [["--help"], *[[name, "--help"] for name in COMMANDS]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as exit:
            assert exit.code == 0, (argv, exit.code)
    texts[" ".join(argv)] = out.getvalue()
heavy = [m for m in ("torch", "numpy", "pydantic", "yaml", "matplotlib") if m in sys.modules]
print(json.dumps({"heavy": heavy, "texts": texts}))
"""


def test_help_of_every_command_imports_no_torch():
    done = subprocess.run(
        [sys.executable, "-c", _HELP_PROBE],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["heavy"] == []
    texts = result["texts"]
    assert len(texts) == len(COMMANDS) + 1
    for name in COMMANDS:
        assert f"usage: chanloss {name}" in texts[f"{name} --help"]
        assert name in texts["--help"]
    assert "--set KEY=VALUE" in texts["config --help"]


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def error_of(path: Path, overrides: list[str]) -> str:
    try:
        load_config(path, overrides)
    except ConfigError as err:
        return str(err)
    raise AssertionError(f"{overrides} was accepted")


def test_unknown_set_keys_suggest_the_full_dotted_key(tmp_path):
    cfg = write(tmp_path / "c.yaml", TINY)
    cases = {
        "lr=0.1": "lr: unknown key (did you mean 'optim.lr'?)",
        "weight_decay=0": "weight_decay: unknown key (did you mean 'optim.weight_decay'?)",
        "hflip=true": "hflip: unknown key (did you mean 'data.augment.hflip'?)",
        "sampler=random": "sampler: unknown key (did you mean 'data.sampler'?)",
        "data.lr=0.1": "data.lr: unknown key (did you mean 'optim.lr'?)",
        "epochz=3": "epochz: unknown key (did you mean 'epochs'?)",  # same section first
        "optim.lrr=1": "optim.lrr: unknown key (did you mean 'lr'?)",
        "data.resise=8": "data.resise: unknown key (did you mean 'data.augment.resize'?)",
    }
    for override, message in cases.items():
        assert error_of(cfg, [override]).endswith(message), override
    assert error_of(cfg, ["zzz=1"]).endswith("zzz: unknown key")


def test_config_prints_the_resolved_validated_config(tmp_path, capsys):
    cfg = write(tmp_path / "c.yaml", TINY)
    assert main(["config", "-c", str(cfg), "--set", "optim.lr=0.2", "--set", "epochs=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = load_config(cfg, ["optim.lr=0.2", "epochs=3"]).model_dump(mode="json")
    assert printed == expected
    assert printed["optim"]["lr"] == 0.2 and printed["epochs"] == 3
    assert printed["data"]["augment"]["hflip"] is False  # defaults filled in
    # what it prints is itself a valid config that resolves to the same thing
    again = write(tmp_path / "again.yaml", printed)
    assert main(["config", "-c", str(again)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == expected
    assert not list(tmp_path.glob("runs")) and sorted(p.name for p in tmp_path.iterdir()) == [
        "again.yaml",
        "c.yaml",
    ]


def test_config_errors_are_one_line_with_status_2(tmp_path, capsys):
    cfg = write(tmp_path / "c.yaml", TINY)
    for argv, message in [
        (["config", "-c", str(cfg), "--set", "lr=0.1"], "(did you mean 'optim.lr'?)"),
        (["config", "-c", str(tmp_path / "none.yaml")], "config file not found"),
        (["config"], "the following arguments are required: -c/--config"),
        (["config", "-c", str(cfg), "--set", "epochs=0"], "epochs: Input should be greater"),
    ]:
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("chanloss: error: "), captured.err
        assert message in lines[0]


def test_every_command_is_one_module_of_the_cli_package():
    import importlib

    helpers = {"__init__", "__main__", "support", "arguments"}
    modules = {p.stem for p in (SRC / "chanloss" / "cli").glob("*.py")} - helpers
    assert modules == set(COMMANDS)
    for name, command in COMMANDS.items():
        module = importlib.import_module(f"chanloss.cli.{name}")
        assert (name, command.help) == (module.NAME, module.HELP)
        assert command.configure is module.configure and command.run is module.run
