"""Checks of a config that need no data, run by ``chanloss config`` and before a run loads its
data: the model and losses are built on torch's ``meta`` device (no memory, no weights) with
the data set's class count, so that a loss that cannot work with the model (MC-Loss with fewer
feature channels than classes) fails in a second, naming the key to change, instead of after
the data is decoded.

The class count comes from the config alone: fixed for the bundled sets, the ``num_classes``
option of ``finegrained``, the class folders of an image folder's ``train/`` (listed, not
read). Data sets whose count is unknown this way (a registered one of the user's, a missing
folder, which loading then reports), and models that load pretrained weights, are left to the
run.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import torch

from chanloss.config import ConfigError, TrainConfig
from chanloss.config.schema import blame_set
from chanloss.run.builders import build_losses, build_model

__all__ = ["check_image_size", "data_shape", "preflight"]

#: (classes, image channels) of the bundled data sets whose class count is fixed
_FIXED = {
    "digits": (10, 1),
    "mnist5k": (10, 1),
    "cifar10": (10, 3),
    "cifar100": (100, 3),
    "cub200": (200, 3),
}


def data_shape(config: TrainConfig) -> tuple[int, int] | None:
    """``(num_classes, in_channels)`` of ``config.data`` without loading it, or ``None``."""
    data = config.data
    if data.name in _FIXED:
        return _FIXED[data.name]
    if data.name == "finegrained":
        from chanloss.data.synthetic import make_finegrained

        default = inspect.signature(make_finegrained).parameters["num_classes"].default
        count = data.options.get("num_classes", default)
        return (count, 3) if isinstance(count, int) and not isinstance(count, bool) else None
    if data.name == "image_folder" and data.root is not None:
        train = Path(data.root).expanduser() / "train"
        try:
            classes = [p for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            return None  # loading the data names the missing folder
        channels = 1 if data.options.get("colour") == "L" else 3
        return (len(classes), channels) if classes else None
    return None


def preflight(config: TrainConfig) -> None:
    """Build ``config``'s model and losses on the meta device; a problem is a
    :class:`ConfigError` naming the key, and the ``--set`` that gave it if one did (see the
    module docstring)."""
    shape = data_shape(config)
    if shape is None or ":" in config.model.name or config.model.options().get("weights"):
        return
    num_classes, in_channels = shape
    try:
        with torch.device("meta"):
            model = build_model(config, num_classes=num_classes, in_channels=in_channels)
            _warn_unequal_groups(config, int(model.num_features), num_classes)
            build_losses(config, model, num_classes)
    except ConfigError as err:
        raise blame_set(config, err) from None
    except (RuntimeError, NotImplementedError, TypeError, ValueError, AttributeError):
        return  # a model that cannot be built without memory: the run builds it for real


def _warn_unequal_groups(config: TrainConfig, channels: int, classes: int) -> None:
    """A warning when MC-Loss's channels do not split evenly among the classes.

    A warning, not an error: MC-Loss then gives some classes one channel more (its groups are
    ``q`` and ``q + 1`` channels), which trains, and a backbone's channel count (2048 on 200
    classes) is often not the user's to choose; but the paper's equal groups are what a user
    of ``feature_channels`` most likely meant, so the nearest multiples are named."""
    from chanloss.losses import LOSSES, loss_spec
    from chanloss.losses.mc_loss import MCLoss

    q, r = divmod(channels, classes)
    if r == 0 or q == 0:  # fewer channels than classes: building the loss says so
        return
    mc = [
        i
        for i, entry in enumerate(config.losses)
        if entry.name in LOSSES and issubclass(loss_spec(entry.name).cls, MCLoss)
    ]
    if not mc:
        return
    key = "model.feature_channels" if "feature_channels" in config.model.options() else None
    change = f"set {key} to" if key else "use a model with"
    down, up = q * classes, (q + 1) * classes
    multiples = f"{down} or {up}" if q > 1 else f"{up}"
    multiples += "" if key else " feature channels"
    warnings.warn(
        f"losses.{mc[0]} (mc): {channels} feature channels are not a multiple of the "
        f"{classes} classes, so MC-Loss's channel groups are unequal ({classes - r} classes get "
        f"{q} channel{'s' if q > 1 else ''}, {r} get {q + 1}); {change} {multiples} for "
        "equal groups",
        stacklevel=2,
    )


def check_image_size(
    config: TrainConfig, num_classes: int, in_channels: int, image_size: tuple[int, int]
) -> None:
    """A :class:`ConfigError` when images of ``image_size`` (what the data gives, before
    ``data.augment.resize``) are too small for the model's poolings, naming the smallest size
    that works. The model is run once on the ``meta`` device (shapes only: no memory, no
    time); a model that cannot be built there is left to the run, as in :func:`preflight`."""
    resize = config.data.augment.resize
    if resize is not None:
        image_size = (resize, resize) if isinstance(resize, int) else (resize[0], resize[-1])
    if ":" in config.model.name or config.model.options().get("weights"):
        return
    try:
        with torch.device("meta"):
            model = build_model(config, num_classes=num_classes, in_channels=in_channels).eval()
    except (RuntimeError, NotImplementedError, TypeError, ValueError, AttributeError):
        return

    def fits(height: int, width: int) -> bool:
        try:
            with torch.no_grad():
                model(torch.zeros(2, in_channels, height, width, device="meta"))
        except RuntimeError as err:
            text = str(err)
            if "too small" in text or "greater than actual input size" in text:
                return False
            raise
        return True

    if fits(*image_size):
        return
    low, high = max(image_size), 4096  # the smallest square size that fits, by bisection
    if not fits(high, high):
        return  # not a question of size: the run reports it
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle, middle) else (middle, high)
    key = "data.augment.resize" if resize is not None else "data.options.image_size"
    raise ConfigError(
        f"data: the images are {image_size[0]}x{image_size[1]} pixels as the model sees them, "
        f"too small for the poolings of model {config.model.name!r}: it needs at least "
        f"{high}x{high}; set {key}: {high} or more (the images are resized to it), or use a "
        "model with fewer poolings"
    )
