"""The configs and commands in the guides work as written.

- ```yaml blocks that describe a run (a ``model`` key) validate against the config schema.
- Every ``chanloss ...`` command in a shell block parses with the current CLI, and the
  ``configs/*.yaml`` it names exists and validates together with its ``--set`` overrides; the
  README shows every command.
- The README's own-image-folder example trains, compares and tunes on a tiny folder.
"""

from __future__ import annotations

import shlex

import pytest
from doc_blocks import DDP_PENDING, README, ROOT, _rel, code_blocks, doc_files


# -- configs and commands in the guides --------------------------------------------------------
def test_yaml_run_configs_validate() -> None:
    from chanloss.config import validate_config, yaml_load

    checked = 0
    for path in doc_files():
        for block in code_blocks(path.read_text(), _rel(path)):
            if block.language != "yaml":
                continue
            raw = yaml_load(block.code)
            if isinstance(raw, dict) and "model" in raw:
                validate_config(raw, source=f"{_rel(path)}:{block.line}")
                checked += 1
                first = block.code.splitlines()[0]
                if first.startswith("# configs/"):  # a copy of a config file: keep it one
                    copied = yaml_load((ROOT / first[2:].strip()).read_text())
                    assert raw == copied, f"{_rel(path)}:{block.line} differs from {first[2:]}"
    assert checked >= 1


def _shell_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` for every chanloss command line in a bash/shell block."""
    found = []
    for path in doc_files():
        for block in code_blocks(path.read_text(), _rel(path)):
            if block.language not in ("bash", "sh", "shell", "console"):
                continue
            joined = block.code.replace("\\\n", " ")
            for offset, line in enumerate(joined.splitlines()):
                line = line.split(" #", 1)[0].strip().removeprefix("$ ")
                words = shlex.split(line) if line else []
                for prefix in (["chanloss"], ["python", "-m", "chanloss"]):
                    if words[: len(prefix)] == prefix:
                        found.append((f"{_rel(path)}:{block.line + offset}", words[len(prefix) :]))
    return found


def test_documented_commands_parse_and_their_configs_validate() -> None:
    from chanloss.cli import COMMANDS, build_parser
    from chanloss.config import load_config

    commands = _shell_commands()
    assert commands, "no chanloss commands found in the guides"
    parser = build_parser()
    for where, argv in commands:
        if DDP_PENDING and "--nproc" in argv:
            continue
        try:
            args = parser.parse_args(argv)
        except Exception as err:  # the CLI's parser raises UsageError instead of exiting
            pytest.fail(f"{where}: 'chanloss {' '.join(argv)}' does not parse: {err}")
        assert args.command in COMMANDS, where
        configs = getattr(args, "configs", None) or [getattr(args, "config", None)]
        for config in configs:
            if config and config.startswith("configs/"):
                assert (ROOT / config).is_file(), f"{where}: {config} does not exist"
                load_config(ROOT / config, getattr(args, "overrides", []))


def test_every_cli_command_is_documented_in_the_readme() -> None:
    from chanloss.cli import COMMANDS

    used = {argv[0] for where, argv in _shell_commands() if where.startswith("README.md")}
    assert set(COMMANDS) <= used, f"README shows no example of {sorted(set(COMMANDS) - used)}"


# -- the README's own-image-folder example, run on a tiny folder ----------------------------
def _own_folder_example() -> tuple[str, list[str]]:
    """The README's ``mine-mc.yaml`` block and the lines of the shell block that uses it."""
    blocks = code_blocks(README.read_text(), "README.md")
    (config,) = [b for b in blocks if b.code.startswith("# mine-mc.yaml")]
    (shell,) = [b for b in blocks if b.language == "bash" and "-c mine-mc.yaml" in b.code]
    return config.code, [line for line in shell.code.splitlines() if line.strip()]


def test_the_readme_own_folder_example_trains_compares_and_tunes(tmp_path, monkeypatch, capsys):
    import subprocess

    from PIL import Image
    from sklearn.datasets import load_digits

    from chanloss.cli import main

    digits = load_digits()
    for label in range(3):  # a train/<class>/ folder only: 3 classes of 30 digit images
        folder = tmp_path / "my-images" / "train" / str(label)
        folder.mkdir(parents=True)
        for i, image in enumerate(digits.images[digits.target == label][:30]):
            Image.fromarray((image * 15).astype("uint8")).save(folder / f"{i}.png")
    config, lines = _own_folder_example()
    (tmp_path / "mine-mc.yaml").write_text(config)
    monkeypatch.chdir(tmp_path)
    small = {"--seeds": "2", "--trials": "2", "--timeout": "10m"}  # tiny budgets, same commands
    for line in lines:
        words = shlex.split(line.split(" #", 1)[0])
        if words[0] != "chanloss":  # the shell step that writes the CE-only config
            subprocess.run(["bash", "-c", line], check=True, timeout=30)
            continue
        argv = [small.get(prev, word) for prev, word in zip(["", *words], words, strict=False)]
        argv = argv[1:]  # 15 epochs of 58 images of 8x8 pixels: a second or two per run
        if argv[0] == "tune":
            argv += ["--confirm-seeds", "0"]
        assert main(argv) == 0, f"README: {line}: {capsys.readouterr().err}"
    out = capsys.readouterr().out
    assert "has no test/ folder; the test split is 18 of the 90 train/ images" in out
    assert "Against mine-ce (the first config):" in out and "mine-mc - mine-ce: " in out
    assert "losses=ce + mc" in out  # compare tells the two configs apart by their losses
    assert (tmp_path / "runs" / "mine-mc" / "best.pt").is_file()
    assert (tmp_path / "runs" / "mine" / "results.csv").is_file()
    assert (tmp_path / "runs" / "mine-tune" / "best.yaml").is_file(), out[-3000:]
