"""The README's facts hold: its loss table lists every registered loss, the parameters with
their true defaults and a one-line example that runs; the results live in docs/results.md and
are current; data sizes, install commands and quoted figures are right; relative links (and
their #anchors) of every guide resolve.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from doc_blocks import DDP_PENDING, DOCS, README, ROOT, _rel, code_blocks, doc_files

RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"


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
