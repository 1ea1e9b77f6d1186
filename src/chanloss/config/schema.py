"""The schema of a training config: pydantic models, one per section, and their validation.

The models below are the single reference for every key and its default (``docs/configuration.md``
is generated from them). Unknown keys and values of the wrong type are errors that name the
dotted key (``optim.lr``, ``losses.1.weight``) with a "did you mean" hint; a string is never
silently converted to a number.
"""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from chanloss.core.errors import ConfigError
from chanloss.core.validation import did_you_mean

__all__ = [
    "MAX_FLOAT32",
    "MAX_PIXELS",
    "MAX_SEED",
    "AugmentConfig",
    "DataConfig",
    "DistributedConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "config_to_dict",
    "dump_config",
    "resolved_config_dict",
    "validate_config",
]

# Bounds on values: far above any real config, far below what breaks the libraries.
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_PIXELS = 1 << 16  # image sizes and padding
MAX_FLOAT32 = 3.4e38  # learning rates and decays become float32 tensors


# -- schema ------------------------------------------------------------------------------------
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelConfig(BaseModel):
    """The network. Every key other than ``name`` is passed to ``create_model`` as an option."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(
        description="Model name for chanloss.models.create_model: convnet_small, resnet20, "
        "resnet56, resnet110, vgg16_bn, resnet18, resnet50, timm:NAME or torchvision:NAME. "
        "Further keys (e.g. width, layer, classifier) are the model's options."
    )

    @model_validator(mode="after")
    def _check_options(self) -> ModelConfig:
        from chanloss.models import MODELS, model_options

        if ":" in self.name:
            return self  # third-party models: their options are checked when they are built
        if self.name not in MODELS:
            hint = did_you_mean(self.name, sorted(MODELS))
            raise ValueError(
                f"unknown model {self.name!r}{hint}; expected one of {sorted(MODELS)} "
                "or timm:NAME / torchvision:NAME"
            )
        accepted = list(model_options(self.name))
        for key in self.options():
            if key not in accepted:
                hint = did_you_mean(key, accepted)
                raise ValueError(
                    f"model {self.name!r} has no option {key!r}{hint}; its options are {accepted}"
                )
        _fill_defaults(self.__pydantic_extra__, MODELS[self.name], accepted)
        return self

    def options(self) -> dict[str, Any]:
        """The keyword arguments for ``create_model`` (everything but name)."""
        return dict(self.__pydantic_extra__ or {})


class AugmentConfig(_Section):
    """Training-time augmentation (batched, on the device); normalisation is always applied."""

    crop_padding: int = Field(
        0,
        ge=0,
        le=MAX_PIXELS,
        description="Random crop after zero padding by this many pixels (0 = off).",
    )
    hflip: bool = Field(False, description="Random horizontal flip with probability 0.5.")
    resize: int | list[int] | None = Field(
        None,
        description="Resize images to this size in pixels (an int, or [height, width]) before "
        "augmenting, in training and evaluation.",
    )

    @field_validator("resize")
    @classmethod
    def _check_resize(cls, value: int | list[int] | None) -> int | list[int] | None:
        sizes = [value] if isinstance(value, int) else value
        if sizes is not None and (
            len(sizes) not in (1, 2) or any(not 1 <= v <= MAX_PIXELS for v in sizes)
        ):
            raise ValueError(
                f"resize must be a size >= 1 or [height, width], got {value!r} (at most "
                f"{MAX_PIXELS} pixels)"
            )
        return value


class DataConfig(_Section):
    """The dataset, its validation split and augmentation."""

    name: str = Field(
        description="Dataset name for chanloss.data.build_datasets: digits, mnist5k, "
        "finegrained, cifar10, cifar100, cub200 or image_folder."
    )
    root: str | None = Field(
        None, description="Directory holding (or receiving) the data; null = the default."
    )
    val_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of the training set held out for validation; best.pt is chosen "
        "on it. 0 = no validation split (best.pt is then the last epoch).",
    )
    split_seed: int | None = Field(
        None,
        ge=0,
        description="Seed of the validation split (and of the folds); null = the run's seed. "
        "Runs that differ only in seed then validate on the same images (chanloss tune).",
    )
    folds: int = Field(
        0,
        ge=0,
        description="k-fold validation: 0 = off (val_fraction decides); K >= 2 splits the "
        "training set into K stratified folds and validates on fold number fold (val_fraction "
        "must be 0).",
    )
    fold: int = Field(0, ge=0, description="With folds: the fold held out for validation, 0..K-1.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Further keyword arguments for build_datasets."
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Training augmentation."
    )
    sampler: Literal["random", "class_balanced"] = Field(
        "random",
        description="Training batches: random (a fresh permutation every epoch) or "
        "class_balanced (P x M: batch_size // samples_per_class classes with samples_per_class "
        "samples each, so every batch holds same-class pairs for CC-Loss). Per process.",
    )
    samples_per_class: int = Field(
        4,
        ge=2,
        description="class_balanced: samples of each class in a batch (M); it must divide "
        "batch_size.",
    )
    mode: Literal["auto", "memory", "stream"] = Field(
        "auto",
        description="memory: decode every image once into host memory (uint8); stream: decode "
        "image files per batch in the DataLoader worker processes (workers), with random crops "
        "of options.image_size from images resized to options.resize (cub200, image_folder); "
        "auto: memory when the decoded set fits memory_budget_gb, else stream.",
    )
    memory_budget_gb: float = Field(
        4.0,
        ge=0.0,
        description="auto mode: the most host memory (GB, 1e9 bytes) the decoded images may "
        "take in memory mode (both splits, one byte per value at options.resize or "
        "options.image_size).",
    )
    cache_dir: str | None = Field(
        None,
        description="Memory mode, image-file sets: keep the decoded images in this directory "
        "as memory-mapped .npy files (named by a hash of the file list, sizes, modification "
        "times and the decode options), so later runs skip decoding and a set larger than RAM "
        "is paged in from disk. null = no cache.",
    )
    normalize: Literal["dataset", "imagenet", "symmetric"] = Field(
        "dataset",
        description="Normalisation statistics: dataset (per-channel mean/std of the training "
        "split; in stream mode of 256 evenly spaced training images), imagenet "
        "(torchvision's, for pretrained weights) or symmetric (mean 0.5, std 0.5: [0, 1] to "
        "[-1, 1], the MC-Loss authors' ResNet-50 script).",
    )

    @model_validator(mode="after")
    def _check_name_and_options(self) -> DataConfig:
        from chanloss.data import DATASETS, dataset_options

        if self.name not in DATASETS:
            hint = did_you_mean(self.name, sorted(DATASETS))
            raise ValueError(
                f"unknown dataset {self.name!r}{hint}; expected one of {sorted(DATASETS)}"
            )
        accepted = list(dataset_options(self.name))
        for key in self.options:
            if key not in accepted:
                hint = did_you_mean(key, accepted)
                raise ValueError(
                    f"dataset {self.name!r} has no option {key!r}{hint}; its options are {accepted}"
                )
        _fill_defaults(self.options, DATASETS[self.name], accepted)
        return self

    @model_validator(mode="after")
    def _check_folds(self) -> DataConfig:
        if self.folds == 1:
            raise ValueError("data.folds: expected 0 (off) or at least 2 folds, got 1")
        if self.folds and self.val_fraction > 0:
            raise ValueError(
                "data.folds and data.val_fraction both choose the validation split; set "
                "data.val_fraction=0 with data.folds"
            )
        if self.folds and self.fold >= self.folds:
            raise ValueError(f"data.fold: expected 0..{self.folds - 1}, got {self.fold}")
        return self


class LossConfig(BaseModel):
    """One term of the objective. Keys other than name/weight/lr are the loss's parameters."""

    model_config = ConfigDict(extra="allow", strict=True)

    name: str = Field(description="Registered loss name (chanloss.losses.LOSSES), e.g. ce, cc, mc.")
    weight: float = Field(
        1.0,
        ge=0.0,
        description="Multiplier of this loss's combined value in the objective (applied by the "
        "trainer on top of the loss's own term weights).",
    )
    lr: float | None = Field(
        None,
        gt=0.0,
        le=MAX_FLOAT32,
        description="Learning rate of the loss's own parameters (attention, centres, margin "
        "heads); null = optim.lr. Follows the same schedule.",
    )

    @model_validator(mode="after")
    def _check_name_and_params(self) -> LossConfig:
        from chanloss.losses import LOSSES, loss_spec

        if self.name not in LOSSES:
            hint = did_you_mean(self.name, sorted(LOSSES))
            raise ValueError(f"unknown loss {self.name!r}{hint}; expected one of {sorted(LOSSES)}")
        spec = loss_spec(self.name)
        given = self.params()
        spec.check_keys(given)
        # a stored config names every parameter the run used (the loss's spec says which)
        if self.__pydantic_extra__ is not None:
            self.__pydantic_extra__.update(spec.defaults(given))
        return self

    def params(self) -> dict[str, Any]:
        """The keyword arguments for the loss's constructor (everything but name/weight/lr)."""
        return dict(self.__pydantic_extra__ or {})


class OptimConfig(_Section):
    """The optimiser of the model's and the losses' parameters."""

    name: Literal["sgd", "adamw"] = Field("sgd", description="sgd or adamw.")
    lr: float = Field(
        0.1, gt=0.0, le=MAX_FLOAT32, description="Peak learning rate (after warm-up)."
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (sgd only).")
    weight_decay: float = Field(
        5e-4, ge=0.0, le=MAX_FLOAT32, description="Weight decay (L2 for sgd, decoupled for adamw)."
    )
    nesterov: bool = Field(False, description="Nesterov momentum (sgd with momentum > 0 only).")
    betas: list[float] = Field(
        default_factory=lambda: [0.9, 0.999],
        min_length=2,
        max_length=2,
        description="AdamW betas (adamw only).",
    )
    pretrained_lr_mult: float = Field(
        1.0,
        gt=0.0,
        description="Learning-rate multiplier of the layers loaded from model.weights (lr * "
        "this); the new layers (classifier, head) and the losses use lr. The MC-Loss authors' "
        "ResNet-50 recipe: lr 0.1, multiplier 0.1 (backbone 0.01).",
    )

    @model_validator(mode="after")
    def _check(self) -> OptimConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum <= 0):
            raise ValueError(
                f"nesterov needs name 'sgd' and momentum > 0, got name {self.name!r} "
                f"and momentum {self.momentum}"
            )
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        return self


class ScheduleConfig(_Section):
    """Learning-rate schedule, updated every optimisation step, after a linear warm-up."""

    name: Literal["step", "cosine", "constant"] = Field(
        "cosine", description="step (multiply by gamma at epochs), cosine (to min_lr) or constant."
    )
    warmup_epochs: float = Field(
        0.0,
        ge=0.0,
        le=1_000_000,
        description="Linear warm-up from 0 to optim.lr over this many epochs.",
    )
    step_size: int | None = Field(
        None, ge=1, description="step: multiply the lr by gamma every step_size epochs."
    )
    milestones: list[int] | None = Field(
        None, description="step: multiply the lr by gamma at each of these epochs."
    )
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: the decay factor.")
    min_lr: float = Field(
        0.0, ge=0.0, le=MAX_FLOAT32, description="cosine: the final learning rate."
    )

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if self.name == "step":
            if (self.step_size is None) == (self.milestones is None):
                raise ValueError(
                    "a step schedule needs exactly one of step_size and milestones, got "
                    f"step_size={self.step_size} and milestones={self.milestones}"
                )
        else:
            for key in ("step_size", "milestones"):
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"{key} is only used when name is 'step', got name {self.name!r}; "
                        f"remove {key} or set it to null"
                    )
        if self.milestones is not None and (
            any(m < 1 for m in self.milestones) or self.milestones != sorted(set(self.milestones))
        ):
            raise ValueError(f"milestones must be increasing epochs >= 1, got {self.milestones}")
        return self


class DistributedConfig(_Section):
    """Several processes (torchrun, or chanloss train --nproc N); ignored in one process."""

    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Process-group backend: auto (nccl on CUDA, gloo on CPU), gloo or nccl."
    )
    sync_bn: bool = Field(
        False,
        description="Convert batch norms to SyncBatchNorm (statistics over the global batch); "
        "CUDA only.",
    )
    timeout_minutes: float = Field(
        10.0,
        gt=0.0,
        le=10080.0,
        description="How long a process waits for the others in a collective operation before "
        "it gives up: a stopped, hung or dead process ends every rank with a one-line error "
        "after at most this long (gloo; NCCL's watchdog aborts the processes).",
    )


class TrainConfig(_Section):
    """A training run: model, data, losses, optimiser, schedule and run options."""

    model: ModelConfig = Field(description="The network.")
    data: DataConfig = Field(description="The dataset.")
    # the ``--set`` items it was loaded with, key -> "KEY=VALUE" (errors found later name them)
    _set_items: dict[str, str] = PrivateAttr(default_factory=dict)
    losses: list[LossConfig] = Field(
        min_length=1,
        description="The objective: the weighted sum of these losses, each fed the model "
        "output it consumes (logits, features or embedding).",
    )
    optim: OptimConfig = Field(default_factory=OptimConfig, description="The optimiser.")
    schedule: ScheduleConfig = Field(
        default_factory=ScheduleConfig, description="The learning-rate schedule."
    )
    epochs: int = Field(10, ge=1, le=1_000_000, description="Number of training epochs.")
    batch_size: int = Field(
        128,
        ge=1,
        le=1 << 24,
        description="Training batch size, per process (see docs/distributed.md).",
    )
    eval_batch_size: int | None = Field(
        None, ge=1, le=1 << 24, description="Evaluation batch size; null = 2 * batch_size."
    )
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="Seed of every random number generator (< 2**32)."
    )
    amp: bool = Field(
        False,
        description="Mixed precision: bfloat16 autocast on CPU, float16 autocast with a "
        "gradient scaler on CUDA.",
    )
    channels_last: bool = Field(False, description="Use the channels-last memory format.")
    workers: int = Field(
        0, ge=0, le=1024, description="DataLoader worker processes (datasets not held in memory)."
    )
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda or cuda:N.")
    grad_clip: float | None = Field(
        None, gt=0.0, description="Clip the gradient norm of all parameters to this value."
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="What a NaN/inf loss does. stop: end the run with an error naming the loss "
        "term, epoch and step; the last good checkpoint is kept. skip: skip that optimisation "
        "step (weights and buffers such as batch-norm statistics stay as before the step; "
        "the schedule still advances) and count it in metrics.csv (skipped_steps). "
        "Checked every step on CPU; on accelerators stop checks a device flag every 10 steps "
        "and at the end of each epoch (no host sync per step) and still reports the first bad "
        "step, while skip syncs every step.",
    )
    tensorboard: bool = Field(
        False,
        description="Also log to TensorBoard (RUN/tensorboard) when it is installed: loss/ "
        "(every term and the total, every 10 steps), train/ (lr every 10 steps; loss, "
        "accuracy, speed per epoch), val/ and test/ accuracy; x axis: the global step.",
    )
    grad_share_every: int = Field(
        50,
        ge=0,
        le=1_000_000,
        description="Every this many steps (0: never), record each loss term's gradient norm "
        "on the feature map, the embedding and the channel-gate attention relative to the "
        "first ce term's (metrics.csv gshare_* columns as epoch means, TensorBoard "
        "grad_share/, the epoch line, chanloss analyze). Taken from the step's graph before "
        "its backward pass: the trained weights are the same with it on or off. Runs with a "
        "single loss term record nothing.",
    )
    eval_every: int = Field(
        1,
        ge=1,
        le=1_000_000,
        description="Evaluate on the validation split every this many epochs (and at the last).",
    )
    test_every_epoch: bool = Field(
        False,
        description="Also evaluate the test split at every evaluation, not only after the "
        "last epoch (false: epoch lines and metrics.csv show validation accuracy, so that "
        "settings are chosen on validation; test accuracy comes once, at the end).",
    )
    distributed: DistributedConfig = Field(
        default_factory=DistributedConfig, description="Multi-process training options."
    )
    search: dict[str, dict[str, Any] | None] = Field(
        default_factory=dict,
        description="chanloss tune only (training ignores it): narrows or overrides the "
        "losses' search spaces and may add optimiser keys, e.g. {mc: {alpha: [0.01, 10], "
        "pool: null}, optim: {lr: [0.01, 0.2]}}; see docs/tuning.md and the default spaces "
        "under loss parameters.",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("search")
    @classmethod
    def _check_search(
        cls, value: dict[str, dict[str, Any] | None], info: ValidationInfo
    ) -> dict[str, dict[str, Any] | None]:
        from types import SimpleNamespace

        from chanloss.config.search import resolve_space

        if value and "losses" in info.data:
            try:
                resolve_space(SimpleNamespace(losses=info.data["losses"], search=value))
            except ValueError as err:
                raise ValueError(str(err).removeprefix("search.")) from None
        return value

    @field_validator("batch_size")
    @classmethod
    def _check_balanced_batches(cls, value: int, info: ValidationInfo) -> int:
        data = info.data.get("data")
        balanced = isinstance(data, DataConfig) and data.sampler == "class_balanced"
        if balanced and value % data.samples_per_class:
            raise ValueError(
                f"data.sampler 'class_balanced' needs a batch_size divisible by "
                f"data.samples_per_class={data.samples_per_class}, got {value}"
            )
        return value


# -- helpers -----------------------------------------------------------------------------------
def _fill_defaults(target: dict[str, Any] | None, factory: Any, names: list[str]) -> None:
    """Add the keyword defaults of ``factory`` for ``names`` that ``target`` lacks, as plain
    YAML values, so that a stored config names every parameter a run used."""
    if target is None:
        return
    for param in inspect.signature(factory).parameters.values():
        if param.name not in names or param.name in target or param.default is param.empty:
            continue
        target[param.name] = _plain(param.default)


def _plain(value: Any) -> Any:
    """A default as the YAML value that means the same (a float subclass becomes a float)."""
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _section_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the schema section at ``loc`` (for 'did you mean' hints)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
        else:
            return []
    return list(model.model_fields)


def _dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of the schema sections below ``model`` (``optim.lr``, ``data.augment.hflip``)."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_dotted_keys(annotation, f"{prefix}{name}."))
    return keys


def _did_you_mean_dotted(key: str, section: tuple[Any, ...], *, exact: bool) -> str:
    """A hint naming the full dotted key when ``key`` belongs to another section
    (``lr`` -> ``optim.lr``): one with the same last part, or (``exact=False``) a close one."""
    here = ".".join(str(p) for p in section)
    others = [k for k in _dotted_keys(TrainConfig) if k.rpartition(".")[0] != here]
    found = [k for k in others if k.rpartition(".")[2].lower() == key.lower()]
    if not found and not exact:
        leaves = {k.rpartition(".")[2]: k for k in reversed(others)}
        close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.75)
        found = [leaves[close[0]]] if close else []
    return f" (did you mean {found[0]!r}?)" if found else ""


def _error_lines(err: ValidationError) -> list[tuple[str, str]]:
    """``(dotted key, "key: what is wrong")`` for each error pydantic found."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "config"
        if e["type"] == "extra_forbidden":
            hint = _did_you_mean_dotted(str(loc[-1]), loc[:-1], exact=True)
            hint = hint or did_you_mean(str(loc[-1]), _section_fields(TrainConfig, loc[:-1]))
            hint = hint or _did_you_mean_dotted(str(loc[-1]), loc[:-1], exact=False)
            lines.append((key, f"{key}: unknown key{hint}"))
            continue
        if e["type"] == "missing":
            lines.append((key, f"{key}: required key is missing"))
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("value_error", "assertion_error"):
            lines.append((key, f"{key}: {msg}"))
        else:
            lines.append((key, f"{key}: {msg}, got {e['input']!r}"))
    return lines


def _format_errors(err: ValidationError) -> str:
    return "; ".join(text for _, text in _error_lines(err))


def set_item_for(key: str, text: str, overrides: dict[str, str]) -> str | None:
    """The ``--set`` item behind an error ``text`` about ``key``: one that set ``key`` or a
    section above it, one the text names whole (``model.feature_channels``), or an option of
    section ``key`` that the text is about (``model: width must be ...``, ``... has no option
    'widht'``)."""
    for set_key, item in reversed(overrides.items()):
        last = set_key.rsplit(".", 1)[-1]
        option = set_key.startswith(key + ".") and "." not in set_key[len(key) + 1 :]
        if (
            key == set_key
            or key.startswith(set_key + ".")
            or set_key in text
            or (option and (text.startswith(f"{key}: {last} ") or f"option '{last}'" in text))
        ):
            return item
    return None


def blame_set(config: TrainConfig, err: ConfigError) -> ConfigError:
    """``err`` (``"model: ..."``, ``"losses.1 (mc): ..."``), prefixed with the ``--set`` of
    ``config`` that caused it, if one did."""
    text = str(err)
    key = text.split(":", 1)[0].split(" ", 1)[0]
    item = set_item_for(key, text, config._set_items)
    return err if item is None else ConfigError(f"--set {item}: {text}")


def validate_config(
    raw: Any, *, source: str = "config", overrides: dict[str, str] | None = None
) -> TrainConfig:
    """Validate a raw (YAML-parsed) mapping; raise :class:`ConfigError` with one line.

    ``overrides`` maps each key set by ``--set`` to its ``KEY=VALUE`` text: an error in such a
    key is reported as the ``--set``'s, not the file's."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(raw).__name__}")
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as err:
        lines = _error_lines(err)
        given = [set_item_for(key, text, overrides or {}) for key, text in lines]
        texts = [
            t if item is None else f"--set {item}: {t}"
            for (_, t), item in zip(lines, given, strict=True)
        ]
        if all(item is not None for item in given):
            raise ConfigError("; ".join(texts)) from None
        raise ConfigError(f"{source}: {'; '.join(texts)}") from None
    config._set_items = dict(overrides or {})
    return config


def dump_config(config: TrainConfig) -> str:
    """The resolved configuration (every default filled in) as YAML."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The resolved configuration as a dict of primitives (for YAML and checkpoints)."""
    return config.model_dump(mode="json")


#: Keys a stored CC-Loss entry names when it was written before ``placement`` existed (a
#: stored config names every default): such an entry is the side-branch reading.
_CC_BEFORE_PLACEMENT = ("form", "min_hidden", "reduction", "pair_reduction")


def upgrade_stored_config(raw: Any) -> Any:
    """A stored config (a checkpoint's, a run's ``config.yaml``) as today's schema reads what
    it meant: a CC-Loss entry written before ``placement`` existed gets ``placement: branch``
    (the reading it was trained with; today's default is the gate). Anything else unchanged."""
    if not isinstance(raw, dict) or not isinstance(raw.get("losses"), list):
        return raw
    losses = []
    for entry in raw["losses"]:
        old = (
            isinstance(entry, dict)
            and entry.get("name") == "cc"
            and "placement" not in entry
            and all(key in entry for key in _CC_BEFORE_PLACEMENT)
        )
        losses.append({**entry, "placement": "branch"} if old else entry)
    return {**raw, "losses": losses}


def resolved_config_dict(raw: Any) -> Any:
    """A stored config (``config.yaml`` of a run, a checkpoint's ``config``) with every key
    that the schema gained since it was written filled in with its default (see
    :func:`upgrade_stored_config`), so that it compares equal to the same config resolved
    today. A stored config that no longer validates is returned unchanged (it then compares
    unequal to any valid config)."""
    try:
        return config_to_dict(validate_config(upgrade_stored_config(raw)))
    except ConfigError:
        return raw
