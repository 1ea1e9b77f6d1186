"""The user guide cannot rot: README.md and docs/*.md are checked against the code.

- Every ```python block runs, in order per file, in one fresh namespace, in a temporary
  directory holding a copy of ``configs/`` (blocks fenced ```python no-run are skipped).
- ```yaml blocks that describe a run (a ``model`` key) validate against the config schema.
- Every ``chanloss ...`` command in a shell block parses with the current CLI, and the
  ``configs/*.yaml`` it names exists and validates together with its ``--set`` overrides.
- The README's loss table lists every registered loss, its parameters with their true
  defaults, and a one-line example that runs.
- docs/configuration.md equals what ``chanloss.config.reference`` generates.
- Relative links (and their #anchors) resolve; the results block markers are in place.
"""

from __future__ import annotations

import ast
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"
# docs/distributed.md and ``chanloss train --nproc`` come from the distributed-training work.
# Until that page exists, links to it and commands using --nproc are not checked; once it
# exists, both are checked like everything else.
DDP_PENDING = not (DOCS / "distributed.md").exists()

_FENCE = re.compile(r"^(`{3,})(.*)$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its info string (``python``, ``python no-run``...), code, line."""

    info: str
    code: str
    line: int  # line number of the first code line in the file (1-based)

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def runs(self) -> bool:
        return self.info.strip() == "python"


def code_blocks(text: str, source: str = "<text>") -> list[Block]:
    """The fenced blocks of a Markdown text whose fence starts a line (column 0).

    A fence of three or more backticks opens a block; the block ends at the first line that
    is a fence of at least as many backticks and nothing else. An unterminated block is an
    error naming the line it starts on.
    """
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        ticks, info = match.group(1), match.group(2).strip()
        start = i + 1
        j = start
        while j < len(lines) and not re.fullmatch(rf"`{{{len(ticks)},}}\s*", lines[j]):
            j += 1
        if j == len(lines):
            raise ValueError(f"{source}:{i + 1}: code block opened with {ticks} is never closed")
        blocks.append(Block(info, "\n".join(lines[start:j]) + "\n", start + 1))
        i = j + 1
    return blocks


def doc_files() -> list[Path]:
    """README.md and every docs/*.md, in a fixed order."""
    return [README, *sorted(DOCS.glob("*.md"))]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run_python_blocks(path: Path) -> int:
    """Execute the runnable python blocks of ``path`` in order in one namespace; their count.

    Each block is compiled with the Markdown file's name and line numbers, so a traceback
    points at the failing line of the document.
    """
    namespace: dict[str, object] = {"__name__": "__docs__"}
    count = 0
    for block in code_blocks(path.read_text(), _rel(path)):
        if not block.runs:
            continue
        padded = "\n" * (block.line - 1) + block.code
        code = compile(padded, str(path), "exec")
        exec(code, namespace)
        count += 1
    return count


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


# -- the README's loss table -------------------------------------------------------------------
def _loss_table() -> list[dict[str, str]]:
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Loss | Config name"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def _code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_loss_table_lists_every_registered_loss() -> None:
    from chanloss.config.reference import builtin_losses

    losses = builtin_losses()  # not LOSSES: other tests may register losses of their own
    rows = _loss_table()
    names = [_code_spans(r["Config name"])[0] for r in rows]
    assert sorted(names) == sorted(losses)
    assert re.search(r"eleven\s+baseline\s+losses", README.read_text()) and len(losses) == 2 + 11
    for row, name in zip(rows, names, strict=True):
        assert _code_spans(row["Loss"])[0] == losses[name].__name__, row


def test_loss_table_parameters_have_their_true_defaults() -> None:
    import inspect

    from chanloss.losses import LOSSES

    for row in _loss_table():
        cls = LOSSES[_code_spans(row["Config name"])[0]]
        params = inspect.signature(cls.__init__).parameters
        spans = _code_spans(row["Main parameters (defaults)"])
        assert spans, row
        for span in spans:
            name, _, text = span.partition("=")
            assert name in params, f"{cls.__name__} has no parameter {name!r}"
            if text:
                value = eval(text, {})  # literals such as 16, "mean", 2/3, None
                assert params[name].default == value, f"{cls.__name__}.{name}: {span}"


def test_loss_table_examples_run() -> None:
    import chanloss.losses as losses_module
    from chanloss.models import ModelOutput

    torch.manual_seed(0)
    # The table's convention: K = 10 classes, C = 64 feature channels (and gate attention),
    # D = 64 embedding dims.
    out = ModelOutput(
        torch.randn(8, 10), torch.randn(8, 64, 4, 4), torch.randn(8, 64), torch.rand(8, 64)
    )
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    namespace = {**vars(losses_module), "out": out, "y": y}
    for row in _loss_table():
        example = _code_spans(row["Example"])[0]
        value = eval(example, namespace)
        assert isinstance(value, torch.Tensor) and value.dim() == 0, example
        assert torch.isfinite(value), example


# -- the README's other facts ------------------------------------------------------------------
def test_results_live_in_docs_results_md_and_are_current() -> None:
    """The generated results moved out of the README into docs/results.md, which
    ``make report`` (tools/results_page.py) regenerates: it must be what the results files give."""
    import subprocess
    import sys

    readme = README.read_text()
    assert RESULTS_START not in readme and RESULTS_END not in readme
    assert "(docs/results.md)" in readme
    page = (DOCS / "results.md").read_text()
    assert page.count(RESULTS_START) == 1 and page.count(RESULTS_END) == 1
    check = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "results_page.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, f"docs/results.md is out of date (make report): {check.stderr}"


def test_the_readme_fits_on_a_few_screens() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; keep it within 160"


CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def test_the_install_gives_the_cpu_build_explicitly() -> None:
    """A plain ``pip install torch`` on Linux fetches the CUDA build: the README's install
    block gives PyTorch's CPU wheel index, with the CUDA command beside it, and ``make``'s
    virtual environment installs the CPU build."""
    install = README.read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
    commands = "".join(b.code for b in code_blocks(install) if b.language == "bash")
    assert CPU_TORCH in commands and "NVIDIA GPU: pip install torch" in commands
    torch_lines = [
        line for line in (ROOT / "Makefile").read_text().splitlines() if "pip install" in line
    ]
    torch_lines = [line for line in torch_lines if " torch" in line]
    assert torch_lines and all(
        "--index-url https://download.pytorch.org/whl/cpu" in line for line in torch_lines
    )


def test_readme_data_sizes_match_the_data_module() -> None:
    from chanloss.data import build_datasets

    text = README.read_text()
    for name, total, side in (("digits", 1797, 8), ("mnist5k", 5000, 28)):
        data = build_datasets(name)
        n_train, n_test = len(data.train), len(data.test)
        assert n_train + n_test == total
        assert data.image_size == (side, side)
        assert f"{n_train:,} train / {n_test:,} test" in text, name
        assert f"{total:,} " in text and f"{side}x{side}" in text, name


def test_accuracy_figures_are_quoted_only_from_results_or_attributed() -> None:
    """Outside the generated results block and code, a percentage may only appear in a
    paragraph that attributes it ("the authors report"); our own numbers go through results
    files and the README's results block. configuration.md is generated from the code."""
    for path in doc_files():
        if path.name == "configuration.md":
            continue
        text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
        text = re.sub(
            re.escape(RESULTS_START) + ".*?" + re.escape(RESULTS_END), "", text, flags=re.S
        )
        for paragraph in re.split(r"\n\s*\n", text):
            figures = re.findall(r"\d+(?:\.\d+)?\s?%", paragraph)
            if figures:
                lowered = paragraph.lower()
                assert "authors report" in lowered, f"{_rel(path)}: unsourced {figures}"


def test_readme_finegrained_defaults_match_the_loader() -> None:
    import inspect

    from chanloss.data import DATASETS

    params = inspect.signature(DATASETS["finegrained"]).parameters
    k, n_train, n_test = (
        params[p].default for p in ("num_classes", "train_per_class", "test_per_class")
    )
    size = params["image_size"].default
    text = README.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `finegrained`"))
    assert f"{k * (n_train + n_test):,} {size}x{size} colour images, {k} classes" in row
    assert f"{k * n_train:,} train / {k * n_test:,} test" in row


def test_readme_links_to_every_guide() -> None:
    text = README.read_text()
    for guide in sorted(DOCS.glob("*.md")):
        assert f"(docs/{guide.name}" in text, f"README does not link docs/{guide.name}"


def _anchor(heading: str) -> str:
    text = "".join(ch for ch in heading.strip().lower() if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    heads = re.findall(r"^#{1,6} (.+)$", text, re.M)
    return {_anchor(h) for h in heads}


def test_relative_links_and_anchors_resolve() -> None:
    broken = []
    for path in doc_files():
        text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            file_part, _, anchor = target.partition("#")
            if DDP_PENDING and file_part.endswith("distributed.md"):
                continue
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                broken.append(f"{_rel(path)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{_rel(path)}: {target} (no such heading)")
    assert not broken, broken


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


def test_python_source_of_docs_is_valid_syntax_even_when_not_run() -> None:
    for path in doc_files():
        for block in code_blocks(path.read_text(), _rel(path)):
            if block.language == "python":
                ast.parse(block.code, filename=f"{_rel(path)}:{block.line}")


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


def test_the_readme_python_example_prints_what_it_computed(workdir, capsys) -> None:
    blocks = [b for b in code_blocks(README.read_text(), "README.md") if b.runs]
    namespace: dict[str, object] = {}
    exec(compile(blocks[0].code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert re.fullmatch(r"features \(32, 30, 8, 8\): CE \d+\.\d{3}, total \d+\.\d{3}\n", printed)
