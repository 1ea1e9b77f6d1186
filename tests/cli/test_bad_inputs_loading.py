"""The bad-input corpus, library surface: the data loaders reject bad arguments with a clear
``ValueError``, and checkpoints, CIFAR pickles, configs and data files are loaded as data, never
run as code."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from bad_input_helpers import Evil, _torch_bytes, cifar_tree, image_folder

from chanloss.data import DatasetError, TensorImageDataset, build_datasets
from chanloss.run.checkpoint import CheckpointError, load_checkpoint


# -- the library surface: data loaders and checkpoints ---------------------------------------
def test_data_loaders_reject_bad_arguments(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"images must be a float32 \(in \[0, 1\]\) or uint8 \(0..255\) tensor "
        r"\(N, C, H, W\), got list",
    ):
        TensorImageDataset([[0.0]], torch.zeros(1, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"labels must be an int64 tensor \(N,\), got \(2,\) torch.float32"
    ):
        TensorImageDataset(torch.zeros(2, 1, 2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="got 2 images and 3 labels"):
        TensorImageDataset(torch.zeros(2, 1, 2, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="seed must be an integer, got '1'"):
        build_datasets("digits", seed="1")
    with pytest.raises(ValueError, match=r"val_fraction must be a finite number in \[0, 0.99\]"):
        build_datasets("digits", val_fraction=-0.1)
    with pytest.raises(ValueError, match="image_size must be in"):
        build_datasets("image_folder", root=image_folder(tmp_path), image_size=0)
    with pytest.raises(ValueError, match="colour must be one of 'auto', 'RGB', 'L', got 'CMYK'"):
        build_datasets("image_folder", root=str(tmp_path / "imgs"), colour="CMYK")


def test_load_checkpoint_refuses_code_and_names_the_file(tmp_path):
    marker = tmp_path / "PWNED"
    cases = {
        "proto2.pt": (pickle.dumps({"x": Evil(marker)}, protocol=2), "refused to load"),
        "proto5.pt": (pickle.dumps({"x": Evil(marker)}), "is not a readable chanloss checkpoint"),
        "torch.pt": (
            _torch_bytes({"format": "chanloss-checkpoint", "version": 1, "x": Evil(marker)}),
            "refused to load",
        ),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name}") and message in str(info.value)
    assert not marker.exists()
    # The same file runs the code when unpickled without weights_only (the test is honest).
    torch.load(tmp_path / "torch.pt", weights_only=False)
    assert marker.exists()


def test_cifar_pickles_of_numpy_1_and_2_load_but_code_is_refused(tmp_path):
    """Real CIFAR files were pickled by numpy 1 (``numpy.core.multiarray``); numpy 2 writes
    ``numpy._core``; both are plain data. A pickle naming anything else never runs."""
    root = Path(cifar_tree(tmp_path / "np2"))
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    old = batch.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old
    batch.write_bytes(old)
    bundle = build_datasets("cifar10", root=str(root))
    assert len(bundle.train) == 10 and bundle.class_names[3] == "c3"
    marker = tmp_path / "PWNED"
    batch.write_bytes(pickle.dumps({b"data": Evil(marker), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(DatasetError, match=r"data_batch_1: refused to unpickle io.open"):
        build_datasets("cifar10", root=str(root))
    assert not marker.exists()


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                found.append((func.id, node))
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                found.append((f"{func.value.id}.{func.attr}", node))
    return found


def test_untrusted_inputs_are_never_executed():
    """Checkpoints, configs and data files are data: in the library and the benchmarks every
    torch.load has weights_only=True, YAML goes through a SafeLoader, pickle only through the
    restricted unpickler, and nothing calls eval or exec."""
    root = Path(__file__).resolve().parents[2]
    seen = set()
    files = sorted([*(root / "src").rglob("*.py"), *(root / "benchmarks").rglob("*.py")])
    for path in files:
        for name, call in _calls(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(root)}:{call.lineno}"
            keywords = {k.arg: k.value for k in call.keywords}
            seen.add(name)
            if name == "torch.load":
                flag = keywords.get("weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, where
            elif name in ("yaml.load", "yaml.load_all"):
                loader = keywords.get("Loader")
                assert isinstance(loader, ast.Name) and loader.id == "_Loader", where
            assert name not in ("eval", "exec", "yaml.unsafe_load", "yaml.full_load"), where
            assert name not in ("pickle.load", "pickle.loads", "torch.jit.load"), where
            assert name not in ("yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader"), where
    # config.yaml_load runs its _Loader (a SafeLoader) step by step to check the limits
    assert "torch.load" in seen and ("yaml.load" in seen or "_Loader" in seen)
    from chanloss.config import _Loader

    assert issubclass(_Loader, yaml.SafeLoader)
