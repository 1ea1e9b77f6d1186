"""Test-wide settings: one torch thread per test process (the CI machine has 2 cores and
pytest-xdist runs two workers; more threads only oversubscribe), and a guard that the suite
leaves nothing behind in the repository's working tree (tests write only under ``tmp_path``)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from ctrl_c import CtrlCLoss

from chanloss.losses import LOSSES
from chanloss.losses.registry import register_loss

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
# Left by tools rather than by tests: the environment, caches, build metadata.
_IGNORED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}


def working_tree_state(root: Path = REPO) -> set[str]:
    """Every file and folder under ``root`` (bar the ignored ones) and the tracked files that
    ``git status`` reports deleted.

    The walk sees what git does not show: empty folders and files in ignored paths (``runs/``).
    Edits to tracked files are not compared (a developer may edit while the suite runs).
    """
    state: set[str] = set()
    for parent, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _IGNORED_DIRS and not d.endswith(".egg-info")]
        rel = Path(parent).relative_to(root)
        state.update(f"{(rel / name).as_posix()}/" for name in dirs)
        state.update((rel / name).as_posix() for name in files)
    try:
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        status = ""
    state.update(f"git: {line}" for line in status.splitlines() if "D" in line[:2])
    return state


@pytest.fixture(scope="session", autouse=True)
def _working_tree_stays_clean() -> Iterator[None]:
    before = working_tree_state()
    yield
    left = sorted(working_tree_state() - before)
    assert not left, (
        "the test suite left these in the working tree (tests must write only under "
        f"tmp_path): {', '.join(left[:20])}"
    )


@pytest.fixture
def ctrl_c_loss() -> Iterator[None]:
    """The Ctrl-C loss (tests/ctrl_c.py) registered as ``test_ctrl_c`` for one test."""
    register_loss("test_ctrl_c")(CtrlCLoss)
    yield
    LOSSES.pop("test_ctrl_c")
    CtrlCLoss.AT = []
