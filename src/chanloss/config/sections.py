"""The sections of a training config (``model``, ``data``, ``data.augment``, ``losses[i]``,
``optim``, ``schedule``, ``distributed``): pydantic models and their own checks.

With :class:`~chanloss.config.schema.TrainConfig`, which holds them, they are the single
reference for every key and its default (``docs/configuration.md`` is generated from them).
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from chanloss.core.validation import did_you_mean

# Bounds on values: far above any real config, far below what breaks the libraries.
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_PIXELS = 1 << 16  # image sizes and padding
MAX_FLOAT32 = 3.4e38  # learning rates and decays become float32 tensors


# -- sections ----------------------------------------------------------------------------------
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
