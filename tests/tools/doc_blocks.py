"""What the documentation tests read: README.md and docs/*.md, their fenced code blocks (info
string, code, line), and the runner of a guide's ``python`` blocks (one namespace per file,
tracebacks at the document's lines)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
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
