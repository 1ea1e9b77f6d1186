"""Follow the config through a command: which modules does a run's config visit, and how often
does it come back to a module it had already left?

Every call of a chanloss function that receives a ``TrainConfig`` as an argument is a step; its
module, with consecutive repeats collapsed, is a stop; a stop in a module that the walk had
already left is a return. Usage (any ``chanloss`` command line after the script name)::

    PYTHONPATH=src python tools/config_walk.py train -c configs/digits-ce.yaml --out /tmp/w -q
    PYTHONPATH=src python tools/config_walk.py --modules prune /tmp/w/last.pt --out /tmp/p -q

prints ``{"stops": ..., "returns": ..., "modules": ...}`` (and with ``--modules`` the walk).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def follow(argv: Sequence[str]) -> tuple[int, list[str]]:
    """Run ``chanloss ARGV`` in this process; its exit status and the walk (module names)."""
    from chanloss.cli import main
    from chanloss.config import TrainConfig

    walk: list[str] = []

    def watch(frame: Any, event: str, arg: Any) -> None:
        module = frame.f_globals.get("__name__", "")
        if event != "call" or not module.startswith("chanloss."):
            return
        code = frame.f_code
        for name in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]:
            if isinstance(frame.f_locals.get(name), TrainConfig):
                if not walk or walk[-1] != module:
                    walk.append(module)
                return

    sys.setprofile(watch)
    try:
        status = main(list(argv))
    finally:
        sys.setprofile(None)
    return status, walk


def count(walk: list[str]) -> dict[str, int]:
    """Stops, returns (a stop in a module left before) and distinct modules of a walk."""
    returns = sum(1 for i, module in enumerate(walk) if module in walk[:i])
    return {"stops": len(walk), "returns": returns, "modules": len(set(walk))}


if __name__ == "__main__":
    args = sys.argv[1:]
    show = args[:1] == ["--modules"]
    status, walk = follow(args[1:] if show else args)
    print(json.dumps(count(walk)))
    if show:
        print(" > ".join(m.removeprefix("chanloss.") for m in walk))
    sys.exit(status)
