"""The accuracy study's protocol: data sets, training recipes, losses, sweeps and parts.

Every part trains raw configs (the schema of ``chanloss.config``) with the project's
trainer. Two kinds of part:

- ``sweep-<dataset>``: CC-Loss (``weight``, ``reduction``, ``pair_reduction``) and MC-Loss
  (``alpha``, ``beta``, ``keep_ratio``) over a grid, each added to cross-entropy, trained on the
  training split minus a validation split (``data.val_fraction = 0.2``, stratified, carved from
  the training data) and scored by the final epoch's VALIDATION accuracy, mean over seeds. The
  test accuracy is never read. The best setting per loss is "chosen" (ties: lower std, then
  grid order, whose first entry is closest to the authors' defaults).
- ``<dataset>``: every registered loss (CE, CC and MC with the chosen settings, label smoothing,
  focal, centre, L-Softmax, SphereFace, CosFace, ArcFace, L-GM, competing ratio, EM-Softmax) on
  the full training split; the number reported is the final epoch's test accuracy.
  ``defaults-<dataset>`` parts are study parts that train CE and the two losses whose defaults
  changed after the others were recorded (CC-Loss's margin form, the published centre update),
  untuned, at those defaults.

Baselines use their papers' default hyper-parameters (no sweep), which favours CC and MC in the
comparison; the README block says so. Losses that read the feature map (CC, MC) or the
embedding without producing class scores (centre) are added to cross-entropy; the margin heads
and L-GM replace the classifier; label smoothing, focal and competing ratio replace CE.

The recipes are fixed here (not read from ``configs/``) so that a resumed study trains exactly
what it started with; they match ``configs/<dataset>-ce.yaml`` apart from ``val_fraction``,
the epochs and (mnist5k) the batch size and learning rate.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

SWEEP_VAL_FRACTION = 0.2

_SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
_COSINE = {"name": "cosine", "warmup_epochs": 1}

#: Training recipe per data set (``losses`` and ``seed`` are filled in per run).
BASES: dict[str, dict[str, Any]] = {
    "digits": {
        "model": {"name": "convnet_small", "width": 16, "feature_channels": 30, "pools": 1},
        "data": {"name": "digits", "augment": {"crop_padding": 1}},
        "optim": _SGD,
        "schedule": _COSINE,
        "epochs": 30,
        "batch_size": 64,
    },
    "mnist5k": {
        "model": {"name": "convnet_small", "width": 16, "feature_channels": 30, "pools": 2},
        "data": {"name": "mnist5k", "augment": {"crop_padding": 2}},
        "optim": _SGD,
        "schedule": _COSINE,
        "epochs": 20,
        "batch_size": 64,
    },
    "finegrained": {
        "model": {"name": "convnet_small", "width": 32, "feature_channels": 30, "pools": 1},
        "data": {
            "name": "finegrained",
            "options": {"num_classes": 10},
            "augment": {"crop_padding": 2, "hflip": True},
        },
        "optim": _SGD,
        "schedule": _COSINE,
        "epochs": 30,
        "batch_size": 64,
    },
}

#: The losses of a study part, by label. ``"cc"`` and ``"mc"`` get the sweep's chosen values.
STUDY_LOSSES: dict[str, list[dict[str, Any]]] = {
    "ce": [{"name": "ce"}],
    # The study's CC-Loss is the ratio form its sweeps tuned (pair_reduction "sum" is a ratio
    # option); the other forms are compared on validation by benchmarks/bench_cc_forms.py.
    # Recorded before the gate placement existed: pinned to the side branch they trained.
    "cc": [{"name": "ce"}, {"name": "cc", "form": "ratio", "placement": "branch"}],
    "mc": [{"name": "ce"}, {"name": "mc"}],
    "label_smoothing": [{"name": "label_smoothing"}],
    "focal": [{"name": "focal"}],
    # The recorded centre-loss results predate the published centre update (now the default);
    # they were trained with optimiser-moved centres, pinned here so that the configs match them.
    "center": [{"name": "ce"}, {"name": "center", "center_update": "sgd"}],
    "lsoftmax": [{"name": "lsoftmax"}],
    "sphereface": [{"name": "sphereface"}],
    "cosface": [{"name": "cosface"}],
    "arcface": [{"name": "arcface"}],
    "lgm": [{"name": "lgm"}],
    "competing_ratio": [{"name": "competing_ratio"}],
    "em_softmax": [{"name": "em_softmax"}],
}
TUNED = ("cc", "mc")

#: The losses whose defaults changed after the recorded study parts were trained, at their
#: CURRENT defaults (CC-Loss: the margin form, no longer the ratio; centre loss: the published
#: centre update, no longer optimiser-moved centres). Only the ``defaults-*`` parts train them,
#: beside cross-entropy, so that the recorded parts keep matching their configs.
CURRENT_DEFAULTS: dict[str, list[dict[str, Any]]] = {
    "cc_default": [{"name": "ce"}, {"name": "cc", "form": "margin", "placement": "branch"}],
    "center_default": [{"name": "ce"}, {"name": "center"}],
}
DEFAULTS_LOSSES = ("ce", *CURRENT_DEFAULTS)

#: Sweep grids; the first value of each list is the authors' (or our documented) default.
SWEEP_GRIDS: dict[str, dict[str, list[Any]]] = {
    "cc": {"weight": [1.0, 0.1, 10.0], "reduction": [4, 16], "pair_reduction": ["mean", "sum"]},
    "mc": {"alpha": [1.5, 0.5], "beta": [20.0, 5.0, 1.0], "keep_ratio": [2 / 3, 1 / 3, 1.0]},
}

#: Settings every sweep point of a loss shares (not part of its label): the CC sweeps tune the
#: ratio form.
SWEEP_FIXED: dict[str, dict[str, Any]] = {"cc": {"form": "ratio", "placement": "branch"}}

#: A narrower grid for the slowest data set (to fit a part in two hours on 2 CPU cores): the
#: values that won on digits and mnist5k (CC reduction 16; MC alpha 1.5) are fixed, the rest kept.
NARROW_GRIDS: dict[str, dict[str, list[Any]]] = {
    "cc": {"weight": [1.0, 0.1, 10.0], "reduction": [16], "pair_reduction": ["mean", "sum"]},
    "mc": {"alpha": [1.5], "beta": [20.0, 5.0, 1.0], "keep_ratio": [2 / 3, 1.0]},
}


#: The second backbone of the study: the standard CIFAR ResNet-20 (16-32-64 channels, 64 in the
#: feature map, so MC-Loss splits it into uneven groups of 6 and 7 channels for 10 classes).
RESNET20: dict[str, Any] = {"name": "resnet20"}

#: The losses the evidence issue names (the ResNet-20 parts train these, to fit in the time).
CORE_LOSSES = (
    "ce", "cc", "mc", "label_smoothing", "focal", "center", "cosface", "arcface", "lgm",
    "competing_ratio",
)  # fmt: skip


#: The fair study (parts of kind "tuned"): every loss, the baselines included, is tuned by
#: ``chanloss tune`` with the same budget on validation (its declared search space plus the
#: learning rate, which gives cross-entropy a search of the same size too); the chosen settings
#: are then trained on the full training split and scored on test like a study part.
TUNE_TRIALS = 12
TUNE_LR_RANGE = [0.01, 0.2]


@dataclass(frozen=True)
class Part:
    """One independently runnable piece of the study (each under two hours on 2 CPU cores).

    ``model`` replaces the data set's recipe model (``None``: the recipe's ConvNet) and
    ``losses`` restricts a study part to those labels (``None``: every loss).
    """

    name: str
    dataset: str
    kind: str  # "sweep" or "study"
    seeds: int = 3
    estimate: str = ""
    grids: dict[str, dict[str, list[Any]]] = field(default_factory=lambda: SWEEP_GRIDS)
    model: dict[str, Any] | None = None
    losses: tuple[str, ...] | None = None
    trials: int = TUNE_TRIALS  # kind "tuned": trials of each loss's search
    note: str = ""  # added to the report's column name (parts that share a data set and model)

    @property
    def sweep_part(self) -> str:
        """The sweep whose chosen values a study part uses (the data set's ConvNet sweep: a
        second backbone reuses the values chosen on validation rather than a sweep of its own)."""
        return f"sweep-{self.dataset}"

    @property
    def column(self) -> str:
        """The part's column in the report: the data set, plus the backbone when not the
        recipe's, plus "tuned" for a part whose every loss is tuned."""
        name = self.dataset if self.model is None else f"{self.dataset}, {self.model['name']}"
        if self.note:
            name = f"{name}, {self.note}"
        return f"{name}, every loss tuned" if self.kind == "tuned" else name


PARTS: dict[str, Part] = {
    "sweep-digits": Part("sweep-digits", "digits", "sweep", 3, "about 9 min"),
    "digits": Part("digits", "digits", "study", 3, "about 4 min"),
    "sweep-mnist5k": Part("sweep-mnist5k", "mnist5k", "sweep", 2, "about 35 min"),
    "mnist5k": Part("mnist5k", "mnist5k", "study", 3, "about 25 min"),
    "sweep-finegrained": Part(
        "sweep-finegrained", "finegrained", "sweep", 2, "about 60 min", NARROW_GRIDS
    ),
    "finegrained": Part("finegrained", "finegrained", "study", 3, "about 100 min"),
    "tuned-digits": Part("tuned-digits", "digits", "tuned", 3, "about 40 min"),
    "tuned-finegrained": Part("tuned-finegrained", "finegrained", "tuned", 3, "about 12 h"),
    # The fair comparison on finegrained cut to what two CPU hours allow: CE and MC-Loss, each
    # with 5 trials (``tuned-finegrained`` is the full part: every loss, 12 trials).
    "tuned-finegrained-short": Part(
        "tuned-finegrained-short",
        "finegrained",
        "tuned",
        3,
        "about 75 min",
        losses=("ce", "mc"),
        trials=5,
        note="CE and MC only, 5 trials",
    ),
    "defaults-digits": Part(
        "defaults-digits",
        "digits",
        "study",
        3,
        "about 2 min",
        losses=DEFAULTS_LOSSES,
        note="current defaults",
    ),
    "defaults-mnist5k": Part(
        "defaults-mnist5k",
        "mnist5k",
        "study",
        3,
        "about 8 min",
        losses=DEFAULTS_LOSSES,
        note="current defaults",
    ),
    "defaults-finegrained": Part(
        "defaults-finegrained",
        "finegrained",
        "study",
        3,
        "about 20 min",
        losses=DEFAULTS_LOSSES,
        note="current defaults",
    ),
    "defaults-digits-resnet20": Part(
        "defaults-digits-resnet20",
        "digits",
        "study",
        3,
        "about 3 min",
        model=RESNET20,
        losses=DEFAULTS_LOSSES,
        note="current defaults",
    ),
    "digits-resnet20": Part(
        "digits-resnet20", "digits", "study", 3, "about 5 min", model=RESNET20, losses=CORE_LOSSES
    ),
    "mnist5k-resnet20": Part(
        "mnist5k-resnet20",
        "mnist5k",
        "study",
        3,
        "about 60 min",
        model=RESNET20,
        losses=CORE_LOSSES,
    ),
    "finegrained-resnet20": Part(
        "finegrained-resnet20",
        "finegrained",
        "study",
        3,
        "about 90 min",
        model=RESNET20,
        losses=CORE_LOSSES,
    ),
}


def format_value(value: Any) -> str:
    """A short, file-name-safe rendering of a hyper-parameter value."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def params_label(params: dict[str, Any]) -> str:
    """``weight=0.1,reduction=4`` (for tables and run-directory names)."""
    return ",".join(f"{k}={format_value(v)}" for k, v in params.items())


def grid(spec: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of a grid, in order (the first is the all-defaults one)."""
    keys = list(spec)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*spec.values())]


def recipe(part: Part) -> dict[str, Any]:
    """The part's training recipe: the data set's, with the part's model if it has one."""
    raw = copy.deepcopy(BASES[part.dataset])
    if part.model is not None:
        raw["model"] = copy.deepcopy(part.model)
    return raw


def base_config(part: Part, *, val_fraction: float) -> dict[str, Any]:
    raw = recipe(part)
    raw["data"]["val_fraction"] = val_fraction
    return raw


def sweep_configs(part: Part) -> list[dict[str, Any]]:
    """``{"label", "loss", "params", "raw"}`` per sweep point: CE + the loss with ``params``."""
    out = []
    for loss, spec in part.grids.items():
        for params in grid(spec):
            raw = base_config(part, val_fraction=SWEEP_VAL_FRACTION)
            raw["losses"] = [{"name": "ce"}, {"name": loss, **SWEEP_FIXED.get(loss, {}), **params}]
            label = f"{loss}_{params_label(params)}".replace("=", "-").replace(",", "_")
            out.append({"label": label, "loss": loss, "params": params, "raw": raw})
    return out


def study_configs(
    part: Part, chosen: dict[str, dict[str, Any]], labels: list[str] | None = None
) -> list[dict[str, Any]]:
    """``{"label", "params", "raw"}`` per loss of a study part; CC/MC get ``chosen[...]``."""
    if part.losses is not None:
        labels = [name for name in (labels or part.losses) if name in part.losses]
    wanted = TUNED if labels is None else [name for name in TUNED if name in labels]
    missing = [name for name in wanted if name not in chosen]
    if missing:
        raise ValueError(f"chosen values are missing for {missing}; got {sorted(chosen)}")
    out = []
    for label, losses in {**STUDY_LOSSES, **CURRENT_DEFAULTS}.items():
        if labels is not None and label not in labels:
            continue
        if label in CURRENT_DEFAULTS and (part.losses is None or label not in part.losses):
            continue
        raw = base_config(part, val_fraction=0.0)
        entries = copy.deepcopy(losses)
        params: dict[str, Any] = {}
        if label in TUNED:
            params = dict(chosen[label])
            entries[-1].update(params)
        raw["losses"] = entries
        out.append({"label": label, "params": params, "raw": raw})
    return out


def tuned_search_configs(part: Part, labels: list[str] | None = None) -> list[dict[str, Any]]:
    """``{"label", "raw"}`` per loss of a "tuned" part: the recipe on the training split minus
    the validation split, with a ``search:`` block adding the learning rate to the loss's own
    declared space (so every loss, CE included, gets a search)."""
    out = []
    for label, losses in STUDY_LOSSES.items():
        if (labels is not None and label not in labels) or (
            part.losses is not None and label not in part.losses
        ):
            continue
        raw = base_config(part, val_fraction=SWEEP_VAL_FRACTION)
        raw["losses"] = copy.deepcopy(losses)
        raw["search"] = {"optim": {"lr": list(TUNE_LR_RANGE)}}
        out.append({"label": label, "raw": raw})
    return out


def tuned_study_configs(part: Part, best: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """``{"label", "params", "raw"}`` per tuned loss: the recipe on the full training split with
    the losses and optimiser of its ``best.yaml`` (``best[label]``: that config)."""
    out = []
    for label, chosen in best.items():
        raw = base_config(part, val_fraction=0.0)
        raw["losses"] = copy.deepcopy(chosen["losses"])
        raw["optim"] = copy.deepcopy(chosen["optim"])
        params = {"lr": chosen["optim"]["lr"]}
        for entry in chosen["losses"]:
            params.update({k: v for k, v in entry.items() if k not in ("name",)})
        out.append({"label": label, "params": params, "raw": raw})
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN for none."""
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def choose(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per loss, the params of the row with the highest ``val_acc_mean`` (ties: lower
    ``val_acc_std``, then earlier row). Rows: ``{"loss", "params", "val_acc_mean",
    "val_acc_std"}``; rows with a NaN mean (every seed diverged) are never chosen."""
    best: dict[str, tuple[tuple[float, float, int], dict[str, Any]]] = {}
    for i, row in enumerate(rows):
        if "test_acc_mean" in row or "test_accs" in row:
            raise ValueError("sweep rows must not carry test accuracy (selection is on validation)")
        mean = row["val_acc_mean"]
        if mean is None or math.isnan(mean):
            continue
        key = (-mean, row["val_acc_std"], i)
        if row["loss"] not in best or key < best[row["loss"]][0]:
            best[row["loss"]] = (key, dict(row["params"]))
    return {loss: params for loss, (_, params) in best.items()}
