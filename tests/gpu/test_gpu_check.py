"""The GPU check script: it exits 0 saying so where CUDA is absent, and its sections run (at toy
sizes, on the CPU) and render in the README results block; the data benchmark's pieces run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
TOOLS = BENCH.parent / "tools"


def _load(name: str, path: Path) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_without_cuda_says_so_and_exits_0():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(BENCH / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "gpu_check: CUDA is not available" in done.stdout
    assert "nothing to check" in done.stdout


def test_gpu_check_sections_run_as_a_cpu_dry_run_and_render(tmp_path):
    gpu_check = _load("chanloss_gpu_check", Path(__file__).resolve().parent / "gpu_check.py")
    out = tmp_path / "results" / "gpu_check_cuda.json"
    assert gpu_check.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["ok"] and not data.get("errors")
    assert len(data["losses"]) >= 13 and all(r["fp32_match"] for r in data["losses"])
    assert {r["model"] for r in data["backbones"]} >= {"resnet18", "resnet50", "vgg16_bn"}
    assert all(r["finite"] and r["channels_last"] for r in data["backbones"])
    assert data["loss_speed"][0]["mc_over_ce"] > 0 and data["stream"]["loading_images_per_s"] > 0
    # the README block shows it (a quick run is normally ignored: mark it as a full one)
    data["quick"] = False
    out.write_text(json.dumps(data))
    report = _load("chanloss_bench_report_gpu", TOOLS / "results_page.py")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    assert report.main(["--results", str(out.parent), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "GPU check" in text and "all checks passed" in text and "| resnet50 | 64 | 2 |" in text


def test_bench_data_pieces(tmp_path):
    bench_data = _load("chanloss_bench_data", BENCH / "bench_data.py")
    root = bench_data.make_tree(tmp_path / "tree", 4)
    assert len(list((root / "train").rglob("*.jpg"))) == 4
    rate = bench_data.worker_rate(root, bench_data.RECIPES["224"], images=2)
    assert rate["images"] == 2 and rate["images_per_cpu_s"] > 0
    report = _load("chanloss_bench_report_data", TOOLS / "results_page.py")
    line = report._data_line(
        {
            "per_worker": {"224": rate},
            "train_images": 4,
            "peak_rss": {"memory": {"data_mb": 30.0}, "stream": {"data_mb": 10.0}},
        }
    )
    assert "memory mode 30 MB, stream mode 10 MB" in line


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU acceptance check needs CUDA")
def test_gpu_check_passes_on_this_gpu(tmp_path):
    """The acceptance test itself (``bash benchmarks/gpu_check.sh`` runs it and keeps its
    results file): every section on the GPU, quick sizes."""
    gpu_check = _load("chanloss_gpu_check_cuda", Path(__file__).resolve().parent / "gpu_check.py")
    out = tmp_path / "gpu_check_cuda.json"
    assert gpu_check.main(["--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["ok"] and not data.get("errors"), data.get("errors")
