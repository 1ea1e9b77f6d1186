"""Pretrained weights for the built-in backbones (``model.weights: PATH``).

A local file saved with ``torch.save`` is read with ``torch.load(weights_only=True)``: a
state_dict in torchvision's key layout (``resnet18``, ``resnet50``: ``conv1``, ``bn1``,
``layerN.M.*``, ``downsample``, ``fc``; ``vgg16_bn``: ``features.N``, ``classifier.N``) or in the
built-in's own (``body.*``, ``head.*``, ``classifier.*``, e.g. the ``model`` entry of a chanloss
checkpoint, which is also accepted whole). The classifier is never loaded: it is built for
``num_classes`` and trained from scratch, like a head the file does not have (torchvision's
VGG classifier MLP is not used; its convolution biases are folded into the following batch
norms' running means). For a 1-channel model the first convolution's RGB filters are
summed over the input channels. Every other tensor of the model must be in the file with its
shape, and every other tensor of the file must be used; otherwise one ``ValueError`` lists the
missing, unexpected and mismatched keys. The names of the loaded parameters are kept on the
model (``pretrained_parameters``) for the optimiser's learning-rate multiplier.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

#: Keys of the model that are always new (built for ``num_classes``).
_NEW_PREFIXES = ("classifier.",)
_SHOW = 3  # keys listed per kind in an error message
_LOAD = contextvars.ContextVar("chanloss_load_pretrained", default=True)


@contextlib.contextmanager
def checkpoint_weights() -> Iterator[None]:
    """Within this block models are built without reading ``weights`` (their tensors come from
    a checkpoint next, e.g. in ``chanloss eval``), so the weights file need not exist any more.
    The parameters outside ``classifier`` and ``head`` are still marked as pretrained, so that
    the optimiser's parameter groups match the checkpoint's."""
    token = _LOAD.set(False)
    try:
        yield
    finally:
        _LOAD.reset(token)


def mark_pretrained(model: nn.Module) -> None:
    """What :func:`checkpoint_weights` does instead of loading: mark the parameters outside
    ``classifier`` and ``head`` as pretrained."""
    model.pretrained_parameters = {
        n for n, _ in model.named_parameters() if not n.startswith(("classifier.", "head."))
    }


def loading_weights() -> bool:
    """False inside :func:`checkpoint_weights`."""
    return _LOAD.get()


def _torchvision_resnet_key(key: str) -> str | None:
    """A torchvision ResNet key in the built-in's layout (``None``: the ``fc`` classifier)."""
    if key.startswith("fc."):
        return None
    if key.startswith("conv1."):
        return "body.stem.0." + key[len("conv1.") :]
    if key.startswith("bn1."):
        return "body.stem.1." + key[len("bn1.") :]
    if key.startswith("layer"):
        return "body." + key.replace(".downsample.", ".shortcut.")
    return key


def _torchvision_vgg_key(key: str) -> str | None:
    """A torchvision VGG key in the built-in's layout (``None``: its classifier MLP)."""
    if key.startswith("classifier."):
        return None
    match = re.fullmatch(r"features\.(\d+)\.(.+)", key)
    return f"body.{match.group(1)}.{match.group(2)}" if match else key


_TORCHVISION = {"ResNet": _torchvision_resnet_key, "VGG16BN": _torchvision_vgg_key}


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a weights file (a state_dict, or a dict holding one under ``model`` or
    ``state_dict``); ``ValueError`` with one line when the file is missing or is not one."""
    file = Path(path).expanduser()
    if not file.is_file():
        what = "is a directory" if file.is_dir() else "not found"
        raise ValueError(f"weights: {file}: {what}; expected a state_dict saved with torch.save")
    try:
        raw = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"weights: {file}: cannot be read as a state_dict saved with torch.save "
            f"({type(err).__name__}: {first[:200]})"
        ) from None
    if isinstance(raw, dict):
        for key in ("model", "state_dict"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw or not all(isinstance(v, Tensor) for v in raw.values()):
        got = type(raw).__name__ if not isinstance(raw, dict) else "a dict of non-tensors"
        raise ValueError(f"weights: {file}: expected a state_dict (names -> tensors), got {got}")
    return {str(k).removeprefix("module."): v for k, v in raw.items()}


def _fold_conv_biases(tensors: dict[str, Tensor], target: dict[str, Tensor]) -> None:
    """torchvision's VGG convolutions have biases, the built-in's (followed by BN) do not: a
    bias ``b`` before BN is folded into the BN's running mean (``mean - b``), which gives the
    same output in evaluation; in training BN subtracts the batch mean, which removes ``b``."""
    for key in [k for k in tensors if k.endswith(".bias") and k not in target]:
        match = re.fullmatch(r"body\.(\d+)\.bias", key)
        if match is None or tensors[key].dim() != 1:
            continue
        mean = f"body.{int(match.group(1)) + 1}.running_mean"
        if mean in tensors and tensors[mean].shape == tensors[key].shape:
            tensors[mean] = tensors[mean] - tensors.pop(key)


def _listing(kind: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW]) + (", ..." if len(keys) > _SHOW else "")
    return f"{len(keys)} {kind} ({shown})"


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> dict[str, object]:
    """Load the weights file ``path`` into the built-in backbone ``model`` (module docstring).

    Returns a report: ``loaded`` (tensors copied), ``new`` (the model's keys left at their
    initialisation), ``skipped`` (the file's classifier keys), ``layout`` (``"torchvision"`` or
    ``"chanloss"``) and ``adapted`` (the first convolution summed to one channel, or ``None``).
    """
    source = read_state_dict(path)
    own = any(k.startswith(("body.", "head.")) for k in source)
    mapping = _TORCHVISION.get(type(model).__name__)
    if not own and mapping is None:
        raise ValueError(
            f"weights: {path}: keys {list(source)[:_SHOW]} are not in the layout of "
            f"{type(model).__name__} (body.*, head.*, classifier.*)"
        )
    target = model.state_dict()
    renamed: dict[str, Tensor] = {}
    skipped: list[str] = []
    for key, value in source.items():
        name = key if own else mapping(key)  # type: ignore[misc]
        if name is None or name.startswith(_NEW_PREFIXES):
            skipped.append(key)
        else:
            renamed[name] = value
    if not own and type(model).__name__ == "VGG16BN":
        _fold_conv_biases(renamed, target)
    first_conv = next((k for k, v in target.items() if k.endswith("weight") and v.dim() == 4), None)
    adapted = None
    if first_conv in renamed:
        have, want = renamed[first_conv], target[first_conv]
        if have.dim() == 4 and want.shape[1] == 1 and have.shape[1] != 1:
            renamed[first_conv] = have.sum(dim=1, keepdim=True)
            adapted = f"{first_conv}: {have.shape[1]} -> 1 input channels (summed)"
    own_new = [k for k in target if k.startswith(_NEW_PREFIXES)]
    heads = [k for k in target if k.startswith("head.") and k not in renamed]
    missing = [k for k in target if k not in renamed and k not in own_new and k not in heads]
    unexpected = [k for k in renamed if k not in target]
    mismatched = [
        f"{k} {tuple(renamed[k].shape)} vs {tuple(target[k].shape)}"
        for k in renamed
        if k in target and renamed[k].shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            _listing(kind, keys)
            for kind, keys in (
                ("missing from the file", missing),
                ("unexpected in the file", unexpected),
                ("of another shape (file vs model)", mismatched),
            )
            if keys
        ]
        layout = "chanloss" if own else "torchvision"
        raise ValueError(
            f"weights: {path} ({layout} layout) does not fit this {type(model).__name__}: "
            f"{'; '.join(parts)}"
        )
    with torch.no_grad():
        for key, value in renamed.items():
            target[key].copy_(value.to(target[key].dtype))
    loaded = set(renamed)
    model.pretrained_parameters = {n for n, _ in model.named_parameters() if n in loaded}
    return {
        "layout": "chanloss" if own else "torchvision",
        "loaded": len(renamed),
        "new": own_new + heads,
        "skipped": skipped,
        "adapted": adapted,
    }
