"""Registration by discovery (core/discovery.py): losses/, models/ and data/ import every module
of their own, so that a loss, model or data set added as one new file registers itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chanloss.core.discovery import import_submodules

SRC = Path(__file__).resolve().parents[2] / "src"


def test_import_submodules_imports_every_public_module(tmp_path, monkeypatch):
    package = tmp_path / "discovery_probe_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "seen.py").write_text("NAMES = []\n")
    for name in ("beta", "alpha", "_helper"):
        (package / f"{name}.py").write_text(
            f"from discovery_probe_pkg.seen import NAMES\nNAMES.append({name!r})\n"
        )
    (package / "notes.txt").write_text("not a module")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import discovery_probe_pkg

        found = import_submodules("discovery_probe_pkg", discovery_probe_pkg.__path__)
        from discovery_probe_pkg.seen import NAMES
    finally:
        for module in [m for m in sys.modules if m.startswith("discovery_probe_pkg")]:
            del sys.modules[module]
    prefix = "discovery_probe_pkg."
    assert found == [prefix + "alpha", prefix + "beta", prefix + "seen"]
    assert NAMES == ["alpha", "beta"]  # sorted, each once; "_helper" is left to its users


def _copy_with(path: Path, old: str, new: str, renames: dict[str, str]) -> None:
    text = path.read_text()
    for a, b in {old: new, **renames}.items():
        assert a in text, (path, a)
        text = text.replace(a, b)
    (path.parent / f"zz_extra_{path.parent.name}.py").write_text(text)


def test_a_new_file_in_losses_models_or_data_registers_itself(tmp_path):
    package = tmp_path / "chanloss"
    shutil.copytree(SRC / "chanloss", package, ignore=shutil.ignore_patterns("__pycache__"))
    _copy_with(
        package / "losses" / "cross_entropy.py",
        '@register_loss("ce")',
        '@register_loss("zz_extra_loss")',
        {"class CrossEntropyLoss(": "class ZZExtraLoss("},
    )
    _copy_with(
        package / "models" / "convnet.py",
        '@register_model("convnet_small")',
        '@register_model("zz_extra_model")',
        {"class SmallConvNet(": "class ZZExtraNet(", "SmallConvNet(": "ZZExtraNet("},
    )
    _copy_with(
        package / "data" / "digits.py",
        '@register_dataset("digits")',
        '@register_dataset("zz_extra_data")',
        {},
    )
    code = (
        "import json, chanloss.losses as l, chanloss.models as m, chanloss.data as d; "
        "print(json.dumps([sorted(l.LOSSES), sorted(m.MODELS), sorted(d.DATASETS)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    losses, models, datasets = json.loads(out.stdout)
    assert "zz_extra_loss" in losses and "ce" in losses
    assert "zz_extra_model" in models and "convnet_small" in models
    assert "zz_extra_data" in datasets and "digits" in datasets


def test_lazy_names_import_on_first_use_and_refuse_an_unknown_name() -> None:
    import chanloss.run
    from chanloss.run import result

    assert "RunResult" in dir(chanloss.run) and "train" in dir(chanloss.run)
    assert chanloss.run.RunResult is result.RunResult
    with pytest.raises(AttributeError, match="'chanloss.run' has no attribute 'nope'"):
        chanloss.run.nope  # noqa: B018
