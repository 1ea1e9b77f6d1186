"""The schema of a training config: :class:`TrainConfig` (its sections are in
:mod:`chanloss.config.sections`), its validation, and the stored form of a config.

The models are the single reference for every key and its default (``docs/configuration.md``
is generated from them). Unknown keys and values of the wrong type are errors that name the
dotted key (``optim.lr``, ``losses.1.weight``) with a "did you mean" hint; a string is never
silently converted to a number.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from chanloss.config.sections import (
    MAX_FLOAT32,
    MAX_PIXELS,
    MAX_SEED,
    AugmentConfig,
    DataConfig,
    DistributedConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    _Section,
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
