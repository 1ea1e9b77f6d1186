"""Build the parts of a run from its config: device, data, augmentation, model and losses
(each configured loss a :class:`LossSlot`; :func:`combine_losses` makes them one objective),
and check a config before its data is loaded (:func:`preflight`, :func:`check_image_size`).

The checks need no data; ``chanloss config`` runs them too. The model and losses are built on torch's ``meta`` device (no memory, no weights) with
the data set's class count, so that a loss that cannot work with the model (MC-Loss with fewer
feature channels than classes) fails in a second, naming the key to change, instead of after
the data is decoded.

The class count comes from the config alone: fixed for the bundled sets, the ``num_classes``
option of ``finegrained``, the class folders of an image folder's ``train/`` (listed, not
read). Data sets whose count is unknown this way (a registered one of the user's, a missing
folder, which loading then reports), and models that load pretrained weights, are left to the
run.

(:class:`~chanloss.run.batches.Batches` and
:func:`~chanloss.run.seeding.seed_everything` are importable from here too.)
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from chanloss.config import ConfigError, TrainConfig
from chanloss.config.schema import blame_set
from chanloss.run.batches import Batches as Batches
from chanloss.run.seeding import seed_everything as seed_everything

if TYPE_CHECKING:
    from chanloss.losses.objective import MultipleLosses


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} was asked for but CUDA is not available")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ConfigError(
                f"device: {name!r} was asked for but there {'is' if count == 1 else 'are'} "
                f"{count} CUDA device{'' if count == 1 else 's'} (cuda:0 to cuda:{count - 1})"
            )
    return device


def build_data(config: TrainConfig) -> Any:
    """The :class:`DataBundle` of ``config.data`` (bad names/options are config errors)."""
    from chanloss.data import build_datasets

    data = config.data
    try:
        return build_datasets(
            data.name,
            root=data.root,
            seed=config.seed,
            val_fraction=data.val_fraction,
            mode=data.mode,
            memory_budget_gb=data.memory_budget_gb,
            cache_dir=data.cache_dir,
            normalize=data.normalize,
            split_seed=data.split_seed,
            folds=data.folds,
            fold=data.fold,
            **data.options,
        )
    except (ValueError, TypeError) as err:
        text = str(err)
        named = any(text.startswith((f"{k} ", f"{k}[")) for k in data.options)
        # a dataset option is named by its place in the config, as the schema names the rest
        raise ConfigError(f"data.options.{text}" if named else f"data: {text}") from None


def build_augmentations(config: TrainConfig, bundle: Any, device: torch.device) -> tuple:
    """The (train, eval) batched augmentation modules, on ``device``."""
    from chanloss.data import build_augmentation

    aug = config.data.augment
    resize = tuple(aug.resize) if isinstance(aug.resize, list) else aug.resize
    try:
        train = build_augmentation(
            train=True,
            mean=bundle.mean,
            std=bundle.std,
            crop_padding=aug.crop_padding,
            hflip=aug.hflip,
            resize=resize,
            crop=bundle.crop,
        )
        evaluate = build_augmentation(
            train=False, mean=bundle.mean, std=bundle.std, resize=resize, crop=bundle.crop
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"data.augment: {err}") from None
    return train.to(device), evaluate.to(device)


def model_options(config: TrainConfig) -> dict[str, Any]:
    """``config.model``'s options, with ``channel_gate: se`` when a CC-Loss of the config has
    ``placement: gate`` and the model option is unset (its bottleneck ``gate_reduction``, unless
    given, is the loss's ``reduction``); ``channel_gate: none`` with such a loss is a
    :class:`ConfigError`."""
    options = config.model.options()
    gated = [
        i
        for i, entry in enumerate(config.losses)
        if entry.name == "cc" and entry.params().get("placement") == "gate"
    ]
    if gated and options.get("channel_gate") == "none":
        raise ConfigError(
            f"losses.{gated[0]} (cc): placement: gate reads the model's channel gate, but "
            f"model.channel_gate is none; set model.channel_gate: se (or leave it unset), or "
            f"losses.{gated[0]}.placement: branch"
        )
    if gated and options.get("channel_gate") is None:
        options["channel_gate"] = "se"
        # the added gate's bottleneck: model.gate_reduction if given, else the loss's reduction
        reduction = config.losses[gated[0]].params().get("reduction")
        if type(reduction) is int and reduction >= 1:  # a bad one is the loss's error
            options.setdefault("gate_reduction", reduction)
    return options


def build_model(config: TrainConfig, *, num_classes: int, in_channels: int) -> nn.Module:
    """The network of ``config.model`` (with the channel gate a CC-Loss of the config reads,
    see :func:`model_options`)."""
    from chanloss.models import create_model

    options = model_options(config)
    try:
        model = create_model(
            config.model.name,
            num_classes=num_classes,
            in_channels=in_channels,
            **options,
        )
    except (ValueError, TypeError, ImportError) as err:
        text = " ".join(str(err).split())
        raise ConfigError(f"model: {text if len(text) <= 300 else text[:300] + '...'}") from None
    except (RuntimeError, MemoryError, OverflowError) as err:  # too large for this machine
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(
            f"model: cannot build {config.model.name!r} with {config.model.options()} "
            f"({type(err).__name__}: {first}); expected a model that fits in memory"
        ) from None
    report = getattr(model, "pretrained_report", None)
    if report is not None:
        from chanloss.core.messages import once
        from chanloss.run.distributed import is_main_process

        adapted = f"; {report['adapted']}" if report["adapted"] else ""
        if is_main_process():
            once(
                f"model: loaded {report['loaded']} tensors of "
                f"{config.model.options()['weights']} ({report['layout']} layout); new: "
                f"{_summarise(report['new'])}; not used from the file: "
                f"{_summarise(report['skipped'])}{adapted}"
            )
    return model


def model_from_checkpoint(
    config: TrainConfig, state: dict[str, Any], *, num_classes: int, in_channels: int
) -> nn.Module:
    """The network of a checkpoint's run, rebuilt from its stored ``config``, before
    ``state["model"]`` is loaded into it.

    The one place where a model is rebuilt from a checkpoint: the checkpoint loader
    (:mod:`chanloss.run.loader`: eval, analyze, predict, export, ``load_model``, tune) and
    ``train --resume`` both call it. A pretrained model's weights file is not read (its tensors
    come from the checkpoint). A checkpoint whose model was changed after it was built (e.g. a
    pruned one, recorded in ``state``) is given that structure here, so that its state dict fits.
    """
    from chanloss.models.pretrained import checkpoint_weights

    with checkpoint_weights():
        model = build_model(config, num_classes=num_classes, in_channels=in_channels)
    if state.get("pruning") is not None:  # written by chanloss prune
        from chanloss.run.checkpoint import apply_pruned_structure

        model = apply_pruned_structure(model, state["pruning"], "the checkpoint")
    return model


def _summarise(keys: list[str]) -> str:
    """``classifier (2 tensors), head (9 tensors)`` from a list of state_dict keys."""
    counts: dict[str, int] = {}
    for key in keys:
        counts[key.split(".")[0]] = counts.get(key.split(".")[0], 0) + 1
    return ", ".join(f"{k} ({n} tensor{'s' if n > 1 else ''})" for k, n in counts.items()) or "none"


@dataclass
class LossSlot:
    """One configured loss with what the trainer needs to call it."""

    index: int
    name: str
    weight: float
    lr: float | None
    loss: nn.Module
    takes_generator: bool
    columns: dict[str, str]  # term name -> metric column name


def build_losses(config: TrainConfig, model: nn.Module, num_classes: int) -> list[LossSlot]:
    """The configured losses, each with its context (classes, channels, embedding size)."""
    from chanloss.losses import loss_spec

    context = {
        "num_classes": num_classes,
        "num_channels": int(model.num_features),
        "embedding_dim": int(model.embedding_dim),
    }
    slots: list[LossSlot] = []
    counts: dict[str, int] = {}
    for i, entry in enumerate(config.losses):
        try:
            spec = loss_spec(entry.name)
            loss = spec.build(context, **entry.params())
        except (ValueError, TypeError) as err:
            raise ConfigError(
                f"losses.{i} ({entry.name}): {err}{_channels_hint(config, str(err), context)}"
            ) from None
        counts[entry.name] = counts.get(entry.name, 0) + 1
        prefix = entry.name if counts[entry.name] == 1 else f"{entry.name}{counts[entry.name]}"
        columns = {
            term: prefix if term == entry.name else f"{prefix}_{term}" for term in loss.weights
        }
        slots.append(
            LossSlot(i, entry.name, entry.weight, entry.lr, loss, spec.takes_generator, columns)
        )
    return slots


def combine_losses(slots: list[LossSlot], world_size: int = 1) -> MultipleLosses:
    """The configured losses as one objective (:class:`~chanloss.losses.objective.MultipleLosses`),
    with their weights, names and logged terms; ``world_size`` scales the losses that gather
    across ranks in what is back-propagated."""
    from chanloss.losses.objective import MultipleLosses

    return MultipleLosses(
        [slot.loss for slot in slots],
        [slot.weight for slot in slots],
        names=[slot.name for slot in slots],
        logged=[list(slot.columns) for slot in slots],
        takes_generator=[slot.takes_generator for slot in slots],
        world_size=world_size,
    )


def _channels_hint(config: TrainConfig, text: str, context: dict[str, int]) -> str:
    """Which key sets a loss's ``num_channels`` (the model's feature channels), when the loss
    refused it."""
    if "num_channels" not in text:
        return ""
    channels, classes = context["num_channels"], context["num_classes"]
    where = (
        f"model.feature_channels is {channels}"
        if "feature_channels" in config.model.options()
        else f"model {config.model.name!r} has {channels} feature channels"
    )
    return (
        f"; the feature channels come from the model: {where} and the data has {classes} "
        f"classes, so set model.feature_channels to at least {classes} (a multiple of "
        f"{classes} gives every class as many channels, e.g. {3 * classes})"
    )


def count_parameters(module: nn.Module) -> int:
    """The number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def run_preprocessing(config: TrainConfig, bundle: Any) -> dict[str, Any]:
    """How an image file becomes this run's model input, as primitives for the checkpoint.

    An image file is read as in evaluation: ``colour`` (``"L"``/``"RGB"``, from the channels),
    brought to ``image_size`` ``[height, width]`` (what the model sees) by ``resize_mode``, or,
    with ``shorter_side`` (the image-file option ``resize``), scaled and centre-cropped as in
    :mod:`chanloss.data.files`; then ``batch_resize`` (``data.augment.resize``) and the
    per-channel ``mean``/``std``. See :class:`chanloss.inference.Preprocessing`.
    """
    channels = int(bundle.in_channels)
    resize = config.data.augment.resize
    if isinstance(resize, int):
        resize = [resize, resize]
    elif isinstance(resize, list) and len(resize) == 1:
        resize = [resize[0], resize[0]]
    shorter = config.data.options.get("resize")
    return {
        "colour": {1: "L", 3: "RGB"}.get(channels),
        "image_size": [int(s) for s in bundle.image_size],
        "resize_mode": str(config.data.options.get("resize_mode", "crop")),
        "shorter_side": int(shorter) if isinstance(shorter, int) else None,
        "batch_resize": None if resize is None else [int(s) for s in resize],
        "mean": [float(m) for m in bundle.mean],
        "std": [float(s) for s in bundle.std],
    }


# -- checks before the data is loaded ----------------------------------------------------------
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
