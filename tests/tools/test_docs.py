"""The user guide cannot rot: README.md and docs/*.md are checked against the code.

- The block collector of doc_blocks.py reads info string, code and line, and refuses an
  unterminated block.
- Every ```python block runs, in order per file, in one fresh namespace, in a temporary
  directory holding a copy of ``configs/`` (blocks fenced ```python no-run are skipped); every
  python block parses.
- docs/configuration.md equals what ``chanloss.config.reference`` generates.

The configs and commands of the guides are checked in test_docs_commands.py; the README's loss
table, its other facts and the relative links in test_docs_readme.py.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import torch
from doc_blocks import DOCS, README, ROOT, _rel, code_blocks, doc_files, run_python_blocks


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary working directory with a copy of configs/, as in a checkout of the repo."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- the collector itself ----------------------------------------------------------------------
def test_code_blocks_reads_info_code_and_line() -> None:
    text = (
        "intro\n```python\nx = 1\ny = 2\n```\n\n```python no-run\nboom()\n```\n```bash\nls\n```\n"
    )
    blocks = code_blocks(text)
    assert [(b.info, b.line, b.runs) for b in blocks] == [
        ("python", 3, True),
        ("python no-run", 8, False),
        ("bash", 11, False),
    ]
    assert blocks[0].code == "x = 1\ny = 2\n"
    assert blocks[2].language == "bash"


def test_code_blocks_longer_fence_and_unterminated_block() -> None:
    text = "````markdown\n```python\nx = 1\n```\n````\n"
    blocks = code_blocks(text)
    assert len(blocks) == 1 and blocks[0].language == "markdown"
    with pytest.raises(ValueError, match=r"doc.md:2: code block opened with ``` is never closed"):
        code_blocks("text\n```python\nx = 1\n", "doc.md")


def test_run_python_blocks_shares_namespace_and_reports_the_doc_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "guide.md"
    doc.write_text("```python\nvalue = 2\n```\ntext\n```python\nassert value == 3\n```\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError) as info:
        run_python_blocks(doc)
    frames = [f for f in info.traceback if str(f.path) == str(doc)]
    assert frames and frames[-1].lineno + 1 == 6  # pytest's lineno is 0-based
    doc.write_text("```python\nvalue = 2\n```\n```python no-run\nraise SystemExit\n```\n")
    assert run_python_blocks(doc) == 1


# -- every guide's python examples -------------------------------------------------------------
def _files_with_python() -> list[Path]:
    return [p for p in doc_files() if any(b.runs for b in code_blocks(p.read_text(), _rel(p)))]


@pytest.mark.parametrize("path", _files_with_python(), ids=_rel)
def test_python_examples_run(path: Path, workdir: Path) -> None:
    torch.manual_seed(0)
    assert run_python_blocks(path) > 0


def test_the_own_data_example_never_touches_the_users_images(workdir: Path) -> None:
    """docs/own-data.md's quick check builds its stand-in folder in a temporary directory: a
    user's ``my-images/`` (the layout the page shows) is left exactly as it was."""
    from PIL import Image

    photo = workdir / "my-images" / "train" / "cat" / "IMG_0001.png"
    photo.parent.mkdir(parents=True)
    Image.new("RGB", (30, 20), color=(200, 120, 40)).save(photo)
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    assert run_python_blocks(DOCS / "own-data.md") > 0
    after = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    assert after == before


def test_every_guide_and_the_readme_have_runnable_examples() -> None:
    """Guides without code (generated reference, distributed page of another owner) aside."""
    exempt = {"configuration.md", "distributed.md", "reproducing.md", "results.md"}
    missing = [
        _rel(p) for p in doc_files() if p.name not in exempt and p not in _files_with_python()
    ]
    assert not missing, f"no runnable ```python block in {missing}"


def test_few_blocks_are_excluded_from_running() -> None:
    skipped = [
        f"{_rel(p)}:{b.line}"
        for p in doc_files()
        for b in code_blocks(p.read_text(), _rel(p))
        if b.language == "python" and not b.runs
    ]
    assert len(skipped) <= 3, f"too many python blocks that do not run: {skipped}"


def test_python_source_of_docs_is_valid_syntax_even_when_not_run() -> None:
    for path in doc_files():
        for block in code_blocks(path.read_text(), _rel(path)):
            if block.language == "python":
                ast.parse(block.code, filename=f"{_rel(path)}:{block.line}")


def test_the_readme_python_example_prints_what_it_computed(workdir, capsys) -> None:
    blocks = [b for b in code_blocks(README.read_text(), "README.md") if b.runs]
    namespace: dict[str, object] = {}
    exec(compile(blocks[0].code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert re.fullmatch(r"features \(32, 30, 8, 8\): CE \d+\.\d{3}, total \d+\.\d{3}\n", printed)


# -- the generated configuration reference -----------------------------------------------------
def test_configuration_reference_is_up_to_date() -> None:
    from chanloss.config.reference import COMMAND, render

    committed = (DOCS / "configuration.md").read_text()
    assert committed == render(), f"docs/configuration.md is out of date; run: {COMMAND}"


def test_configuration_reference_covers_the_schema() -> None:
    from chanloss.config.reference import SECTIONS, builtin_losses, render

    losses = builtin_losses()

    text = render()
    for prefix, _, cls in SECTIONS:
        for name, field in cls.model_fields.items():
            assert f"| `{prefix}{name}` |" in text, f"{prefix}{name} missing"
            if not field.is_required() and field.default_factory is None:
                from chanloss.config.reference import format_value

                row = next(line for line in text.splitlines() if f"| `{prefix}{name}` |" in line)
                assert f"| {format_value(field.default)} |" in row, row
    for name, cls in losses.items():
        assert f"### `{name}`: {cls.__name__}" in text


def test_config_reference_check_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from chanloss.config.reference import main, render

    good, bad = tmp_path / "good.md", tmp_path / "bad.md"
    good.write_text(render())
    bad.write_text(render().replace("| `epochs` | int | 10 |", "| `epochs` | int | 11 |"))
    assert main(["--check", str(good)]) == 0
    assert main(["--check", str(bad)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main([]) == 0
    assert capsys.readouterr().out == render()


def test_format_helpers() -> None:
    from typing import Literal

    from chanloss.config.reference import format_type, format_value

    assert format_value(None) == "null" and format_value(True) == "true"
    assert format_value(2 / 3) == "0.666667" and format_value(5e-4) == "0.0005"
    assert format_value([0.9, 0.999]) == "[0.9, 0.999]"
    assert format_type(int | None) == "int or null"
    assert format_type(Literal["sgd", "adamw"]) == "one of sgd, adamw"
    assert format_type(list[int] | None) == "list of int or null"
