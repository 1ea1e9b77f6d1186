"""The package installs from its wheel into a fresh environment without the dev extras, and its
command line then trains. Offline: the wheel is built without build isolation and installed
with --no-deps into a fresh venv that sees this environment's site-packages (torch, numpy...)
through a .pth file, so the check is the package's own files and entry point, not a download."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEV_ONLY = {"pytest", "pytest-xdist", "ruff", "pytorch-metric-learning"}


def _run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    env["PIP_NO_INDEX"] = "1"  # never reach a package index
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done


def _wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the sources (setuptools writes build/ beside them)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out)]
        + ["-q", str(source)],
        cwd=tmp_path,
    )
    (wheel,) = out.glob("chanloss-*.whl")
    return wheel


def _requirements(wheel: Path) -> tuple[set[str], dict[str, set[str]]]:
    """The wheel's Requires-Dist: the names always required, and those of each extra."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(name).decode()
    always: set[str] = set()
    extras: dict[str, set[str]] = {}
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        spec, _, marker = line.removeprefix("Requires-Dist: ").partition(";")
        package = spec.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
        if "extra ==" in marker:
            extra = marker.split("extra ==")[1].strip().strip("'\"")
            extras.setdefault(extra, set()).add(package)
        else:
            always.add(package)
    return always, extras


def test_the_wheel_installs_into_a_fresh_venv_and_trains(tmp_path):
    wheel = _wheel(tmp_path)
    always, extras = _requirements(wheel)
    assert {"torch", "pyyaml", "pydantic", "optuna"} <= always
    assert not always & DEV_ONLY, f"dev-only packages required by every install: {always}"
    assert extras["onnx"] == {"onnx"} and extras["tensorboard"] == {"tensorboard"}

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    (fresh_site,) = Path(venv / "lib").glob("python*/site-packages")
    # the heavy dependencies come from this environment, after the fresh one's own packages
    (fresh_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        + [str(wheel)],
        cwd=tmp_path,
    )
    where = _run([str(python), "-c", "import chanloss; print(chanloss.__file__)"], cwd=tmp_path)
    assert where.stdout.strip().startswith(str(fresh_site)), where.stdout

    chanloss = venv / "bin" / "chanloss"
    assert "train" in _run([str(chanloss), "--help"], cwd=tmp_path).stdout
    config = {
        "model": {"name": "convnet_small", "width": 4, "feature_channels": 20},
        "data": {"name": "digits"},
        "losses": [{"name": "ce"}, {"name": "mc"}],
        "epochs": 1,
        "batch_size": 256,
        "device": "cpu",
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    _run([str(chanloss), "train", "-c", "tiny.yaml", "--out", "run"], cwd=tmp_path)
    assert (tmp_path / "run" / "best.pt").is_file() or (tmp_path / "run" / "last.pt").is_file()


def _docs_and_messages() -> dict[str, str]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    files += sorted((REPO / "src").rglob("*.py"))
    return {str(p.relative_to(REPO)): p.read_text() for p in files}


def test_the_readme_says_how_to_install_and_no_text_names_an_unreleased_package():
    readme = (REPO / "README.md").read_text()
    for line in (
        "pip install .",
        "pip install -e .",
        "pip install 'git+",
        "pip install '.[onnx,tensorboard]'",
    ):
        assert line in readme, line
    assert "install torch first" in " ".join(readme.lower().split())
    for name, text in _docs_and_messages().items():
        # chanloss is on no package index: a `pip install chanloss...` line cannot work
        for bad in ("pip install chanloss", "pip install 'chanloss[", 'pip install "chanloss['):
            assert bad not in text, f"{name}: {bad!r}"
