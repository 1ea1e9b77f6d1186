"""Loading the repository's scripts (benchmarks/, tools/) as modules in the tests of tools."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
TOOLS = BENCH.parent / "tools"


def load_script(name: str, path: Path) -> ModuleType:
    """The script at ``path`` imported as module ``name`` (the benchmarks' folders on the path,
    as when the script runs)."""
    for folder in (BENCH, BENCH / "study"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
