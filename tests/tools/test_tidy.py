"""The repository stays tidy: the working-tree guard of conftest.py notices what a test leaves
behind, the package ships its typing marker, and one validation module serves everything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import REPO, working_tree_state  # noqa: E402


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_working_tree_guard_sees_new_files_empty_folders_and_deletions(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "kept.txt").write_text("a")
    (tmp_path / ".gitignore").write_text(".venv/\n")
    (tmp_path / ".venv").mkdir()
    _git(tmp_path, "add", "kept.txt", ".gitignore")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    before = working_tree_state(tmp_path)
    assert "kept.txt" in before
    assert not any(p.startswith(".venv") or p.startswith(".git/") for p in before)

    (tmp_path / "x").mkdir()  # an empty folder: invisible to `git status`
    (tmp_path / ".venv" / "ignored").write_text("tools' caches are not the tests' doing")
    assert working_tree_state(tmp_path) - before == {"x/"}
    (tmp_path / "kept.txt").write_text("b")  # an edit is not the suite's business
    assert working_tree_state(tmp_path) - before == {"x/"}
    (tmp_path / "kept.txt").unlink()  # a tracked file deleted is
    assert working_tree_state(tmp_path) - before == {"x/", "git:  D kept.txt"}


def test_package_ships_py_typed_and_one_validation_module():
    assert (REPO / "src" / "chanloss" / "py.typed").is_file()
    text = (REPO / "pyproject.toml").read_text()
    assert 'chanloss = ["py.typed"]' in text
    for old in ("losses/_checks.py", "models/_checks.py"):
        assert not (REPO / "src" / "chanloss" / old).exists()
    assert not list(REPO.glob("log*.txt"))


def test_validation_module_needs_only_torch():
    code = (
        "import sys; import chanloss.losses, chanloss.core.validation; "
        "bad = [m for m in sys.modules if m.startswith(('chanloss.models', 'chanloss.data', "
        "'chanloss.run', 'chanloss.config', 'chanloss.experiments', 'numpy.random', 'yaml', 'pydantic'))]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda v: v.check_int("n", 0, low=1), r"n must be in \[1, inf\), got 0"),
        (lambda v: v.check_int("n", 3, low=0, high=2), r"n must be in \[0, 2\], got 3"),
        (lambda v: v.check_int("n", True), r"n must be an integer, got True \(bool\)"),
        (lambda v: v.check_float("p", 1.0, high=1.0, high_inclusive=False), r"in \(-inf, 1\)"),
        (lambda v: v.check_float("p", float("nan")), "p must be a finite number.*got nan"),
        (lambda v: v.check_bool("flag", 1), r"flag must be True or False, got 1 \(int\)"),
        (lambda v: v.check_choice("k", True, (1, 2)), "k must be one of 1, 2, got True"),
        (lambda v: v.check_size("s", (1, 2, 3)), r"s must be an int or a \(height, width\) pair"),
        (lambda v: v.check_options("model", "m", {"zz": 1}, ("a",)), "has no option 'zz'"),
    ],
)
def test_validation_messages(call, message):
    from chanloss.core import validation as _validation

    with pytest.raises(ValueError, match=message):
        call(_validation)
