"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and containers of primitives: the resolved config as a dict,
state dicts, and the random number generator states as tensors, so that ``--resume``
continues a run exactly. A file holding anything else (a pickle that would import a class or
call a function) is refused without running it.

Writing goes to a temporary file in the same directory, flushed to disk, then renamed over
the old file (created with the umask's permissions, see :mod:`chanloss.run.run_dir`), so
a checkpoint on disk is always complete: a process killed mid-write leaves
the previous file and a stray ``.NAME.*.tmp``. The environment variable
``CHANLOSS_TEST_SLOW_CHECKPOINT`` (seconds; used only by the tests) pauses half-way through
the write, so that tests can kill a run inside that window.
"""

from __future__ import annotations

import io
import itertools
import os
import random
import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chanloss.core.atomic import open_temp
from chanloss.core.errors import CheckpointError
from chanloss.core.errors import ConfigError as ConfigError

FORMAT = "chanloss-checkpoint"
VERSION = 1


SLOW_WRITE_ENV = "CHANLOSS_TEST_SLOW_CHECKPOINT"
# What a checkpoint argument should be, for the errors about a file that is not one.
EXPECTED = "expected a run's last.pt or best.pt (written by chanloss train)"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file in the same directory + rename).

    A failed write (disk full, directory removed or read-only) raises :class:`CheckpointError`
    and leaves the previous file as it was.
    """
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **state}
    try:
        fd, tmp = open_temp(path)
    except OSError as err:
        raise CheckpointError(f"cannot write checkpoint {path}: {_os_reason(err)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            pause = float(os.environ.get(SLOW_WRITE_ENV) or 0)
            if pause > 0:
                buffer = io.BytesIO()
                torch.save(payload, buffer)
                data = buffer.getbuffer()
                f.write(data[: len(data) // 2])
                f.flush()
                time.sleep(pause)
                f.write(data[len(data) // 2 :])
            else:
                torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(
            f"cannot write checkpoint {path}: {_os_reason(err)}; the previous {path.name} "
            "(if any) is unchanged"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _os_reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a chanloss checkpoint; anything else is a :class:`CheckpointError`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, expected a file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path} is not a readable chanloss checkpoint (the file is empty); {EXPECTED}"
        )
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: not for users
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling raises many types
        raise CheckpointError(_load_failure(path, err)) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a chanloss checkpoint (no {FORMAT!r} marker); it is "
            f"{_what_torch(state)}; {EXPECTED}"
        )
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {state.get('version')}, expected {VERSION}"
        )
    return state


def describe(err: BaseException) -> str:
    """The informative line of a ``load_state_dict`` error (the first after its header)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return f"{lines[0].removesuffix(':')}: {lines[1]}"
    return lines[0] if lines else type(err).__name__


def _load_failure(path: Path, err: Exception) -> str:
    """A one-line reason why ``torch.load(path, weights_only=True)`` failed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            return (
                f"{path}: refused to load: the file holds not only tensors and plain containers "
                f"(it would import and call {found.group(1)}); checkpoints are read as data "
                "(torch.load weights_only=True) and never run code"
            )
        return (
            f"{path} is not a readable chanloss checkpoint (it is {file_kind(path)}, not a "
            f"torch checkpoint; nothing in it was run); {EXPECTED}"
        )
    if "zip archive" in text or "central directory" in text or isinstance(err, EOFError):
        first = text.split(". ")[0] if text else type(err).__name__
        return (
            f"{path} is not a readable chanloss checkpoint (truncated or not a torch file: "
            f"{first}; it is {file_kind(path)}); {EXPECTED}"
        )
    first = text.splitlines()[0] if text else type(err).__name__
    return f"{path} is not a readable chanloss checkpoint ({first}); {EXPECTED}"


# Leading bytes of the kinds of file a checkpoint argument is mistaken for.
_MAGIC = (
    (b"PK\x03\x04", "a zip archive"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x93NUMPY", "a numpy .npy array"),
    (b"\x1f\x8b", "a gzip file"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "a program (ELF)"),
)


def file_kind(path: Path) -> str:
    """What the file at ``path`` looks like, from its first bytes (``a Python pickle``,
    ``a text file``, ``a PNG image``, ...), for an error about a file that is no checkpoint."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return "an unreadable file"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:1] == b"\x80" and head[1:2] in {bytes([v]) for v in range(2, 6)}:
        return "a Python pickle"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not a character cut off by the 4096-byte read
            return "a binary file of another kind"
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return "a text file (JSON?)"
    return "a text file (YAML or CSV?)" if b":" in text or b"," in text else "a text file"


def _what_torch(state: Any) -> str:
    """What a torch file that is no chanloss checkpoint holds."""
    if isinstance(state, dict):
        keys = ", ".join(repr(k) for k in list(state)[:3])
        more = ", ..." if len(state) > 3 else ""
        return (
            f"a torch file holding a dict with the keys {keys}{more}" if state else "an empty dict"
        )
    return f"a torch file holding a {type(state).__name__}"


def capture_rng(device: torch.device, generator: torch.Generator | None = None) -> dict[str, Any]:
    """The states of the torch (CPU and CUDA), numpy and python generators, as tensors."""
    np_state = np.random.get_state()  # noqa: NPY002 - the global generator is what is saved
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }
    if device.type == "cuda":
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(
    state: dict[str, Any], device: torch.device, generator: torch.Generator | None = None
) -> None:
    """Set every generator back to a state taken by :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(list(state["cuda"].unbind(0)))
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


# Keys of the config that must match for --resume to make sense.
_IDENTITY_KEYS = ("model", "losses", "data")


def check_resumable(saved: dict[str, Any], current: dict[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` when the checkpoint is of another model, loss or data."""
    for key in _IDENTITY_KEYS:
        a, b = saved.get(key), current.get(key)
        if key == "data" and isinstance(a, dict) and isinstance(b, dict):
            a, b = {**a, "root": None}, {**b, "root": None}  # the data may have moved
        if a != b:
            raise CheckpointError(
                f"{source} was trained with {key} {_short(saved.get(key), current.get(key))}, "
                f"but the config has {key} {_short(current.get(key), saved.get(key))}"
            )


def _short(value: Any, other: Any = None) -> str:
    """``value`` for a message: named entries by name, with the keys whose values differ from
    the same entry of ``other`` (a stored config names every default, so all would be noise)."""
    if isinstance(value, list):
        others = other if isinstance(other, list) and len(other) == len(value) else []
        pairs = itertools.zip_longest(value, others[: len(value)])
        return "[" + ", ".join(_short(v, o) for v, o in pairs) + "]"
    if isinstance(value, dict) and "name" in value:
        same = isinstance(other, dict) and other.get("name") == value["name"]
        extra = {k: v for k, v in value.items() if k != "name" and same and other.get(k) != v}
        return f"{value['name']}" + (f" {extra}" if extra else "")
    return repr(value)


def apply_pruned_structure(model: Any, record: Any, source: str) -> Any:
    """``model`` (built from a checkpoint's config) with the channels that ``chanloss prune``
    removed removed again (:func:`chanloss.models.pruned.apply_structure`); a record that does
    not fit is a :class:`CheckpointError` naming ``source``."""
    from chanloss.models.pruned import apply_structure

    try:
        return apply_structure(model, record)
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise CheckpointError(f"{source}: cannot re-apply its pruned structure ({err})") from None
