"""Generate the configuration reference (``docs/configuration.md``) from the pydantic schema.

    python -m chanloss.config.reference > docs/configuration.md
    python -m chanloss.config.reference --check docs/configuration.md

Every key, type, default, allowed range and description comes from the schema in
:mod:`chanloss.config`; the loss parameters, model options and dataset options come
from the signatures of the registered losses, models and datasets. The test suite compares
the committed file with :func:`render`, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import re
import sys
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from chanloss.config import (
    AugmentConfig,
    DataConfig,
    DistributedConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)

COMMAND = "python -m chanloss.config.reference > docs/configuration.md"

#: Constructor arguments of a loss that the trainer fills in from the model and data.
CONTEXT_PARAMS = ("num_classes", "num_channels", "embedding_dim")

# (dotted key prefix, heading, schema class); the order of the sections in the document.
SECTIONS: tuple[tuple[str, str, type[BaseModel]], ...] = (
    ("", "Top level", TrainConfig),
    ("model.", "`model`", ModelConfig),
    ("data.", "`data`", DataConfig),
    ("data.augment.", "`data.augment`", AugmentConfig),
    ("losses[i].", "`losses` (a list; each entry)", LossConfig),
    ("optim.", "`optim`", OptimConfig),
    ("schedule.", "`schedule`", ScheduleConfig),
    ("distributed.", "`distributed`", DistributedConfig),
)

_SECTION_OF: dict[type[BaseModel], str] = {cls: heading for _, heading, cls in SECTIONS}


# -- formatting --------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """A default value as it would be written in YAML (floats to 6 significant digits)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(float(value))
        return text if len(text) <= 8 else format(value, ".6g")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def format_type(annotation: Any) -> str:
    """A type annotation in words: ``int``, ``float or null``, ``one of sgd, adamw``..."""
    if annotation is None or annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [format_type(a) for a in args if a is not type(None)]
        if type(None) in args:
            parts.append("null")
        return " or ".join(parts)
    if origin in (list, Sequence):
        return f"list of {format_type(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _constraints(field: FieldInfo) -> str:
    words = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Gt):
            words.append(f"> {format_value(item.gt)}")
        elif isinstance(item, annotated_types.Ge):
            words.append(f">= {format_value(item.ge)}")
        elif isinstance(item, annotated_types.Lt):
            words.append(f"< {format_value(item.lt)}")
        elif isinstance(item, annotated_types.Le):
            words.append(f"<= {format_value(item.le)}")
        elif isinstance(item, annotated_types.MinLen):
            words.append(f"length >= {item.min_length}")
        elif isinstance(item, annotated_types.MaxLen):
            words.append(f"length <= {item.max_length}")
    return ", ".join(words)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()
        if isinstance(value, BaseModel):
            return "(all defaults)"
        return format_value(value)
    if field.default is PydanticUndefined:
        return "required"
    return format_value(field.default)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _describe(field: FieldInfo) -> str:
    text = field.description or ""
    annotation = field.annotation
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and candidate in _SECTION_OF:
            text += f" See {_SECTION_OF[candidate]}."
    return text.strip()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _first_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    paragraph = doc.split("\n\n", 1)[0]
    return " ".join(paragraph.split())


def _signature_rows(
    func: Callable[..., Any],
    skip: Sequence[str],
    context: Sequence[str] = (),
    build: Callable[..., Any] | None = None,
) -> list[list[str]]:
    """``[option, default, allowed values]`` per keyword parameter of ``func``; ``build(**kw)``
    builds the thing (default: ``func``) to ask its validation for a choice's values."""
    options = [
        (param.name, _EMPTY if param.default is param.empty else param.default)
        for param in inspect.signature(func).parameters.values()
        if param.name not in skip and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
    ]
    return _option_rows(options, context, build or func)


_EMPTY = object()  # an option without a default


def _option_rows(
    options: Sequence[tuple[str, Any]], context: Sequence[str], build: Callable[..., Any]
) -> list[list[str]]:
    """``[option, default, allowed values]`` per ``(name, default)`` (``_EMPTY``: none)."""
    rows = []
    for name, value in options:
        if name in context:
            default = "filled in by the trainer"
        elif value is _EMPTY:
            default = "required"
        else:
            default = format_value(value)
        rows.append([f"`{name}`", default, _allowed(build, name, value)])
    return rows


_PROBE = "\x00?"  # a value no option accepts: the validation error lists the allowed ones
_ALLOWED_TEXT = {"image_size": "auto, an int or [height, width]"}


def _allowed(build: Callable[..., Any], name: str, default: Any) -> str:
    """The allowed values of a choice option, as its own validation names them (``one of``),
    ``true or false`` for a flag, else empty."""
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, str) or name in ("layer4_stride",):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                build(**{name: _PROBE})
        except Exception as err:  # the validation's message is what we want
            found = re.search(re.escape(name) + r" must be one of (.*), got ", str(err))
            if found:
                return "one of " + found.group(1).replace("'", "")
        if default == "auto" and name in _ALLOWED_TEXT:
            return _ALLOWED_TEXT[name]
    return ""


# -- the document ------------------------------------------------------------------------------
def render() -> str:
    """The whole Markdown reference."""
    from chanloss.data import DATASETS
    from chanloss.losses import LOSSES
    from chanloss.models import MODELS

    out = _introduction()
    for prefix, heading, cls in SECTIONS:
        out += _schema_section(prefix, heading, cls)
    out += _loss_parameters(_builtin(LOSSES))
    out += _model_options(_builtin(MODELS))
    out += _dataset_options(_builtin(DATASETS))
    return "\n".join(out).rstrip("\n") + "\n"


def _introduction() -> list[str]:
    """The title and the rules that hold for every key."""
    return [
        "# Configuration reference",
        "",
        f"<!-- Generated from the pydantic schema by `{COMMAND}`; do not edit by hand. "
        "tests/tools/test_docs.py fails when this file is out of date. -->",
        "",
        "A run is described by one YAML file (examples in `configs/`). It is read with "
        "`chanloss.config.load_config(path, overrides)` and validated by the schema in "
        "`chanloss.config`:",
        "",
        "- unknown keys and values of the wrong type are errors naming the dotted key "
        "(`optim.lr`, `losses.1.weight`), with a *did you mean* hint;",
        "- a string is never converted to a number (`lr: '0.1'` is an error), but `1e-4` "
        "without a dot is read as a float;",
        "- `--set KEY=VALUE` on the command line changes the YAML before validation, so it is "
        "checked exactly like the file (the value is YAML: `--set optim.lr=0.05`, "
        "`--set data.augment.hflip=true`, `--set losses.1.weight=0.5`; the index one past the "
        "end of a list appends an entry: `--set losses.2.name=center`);",
        "- the resolved config, with every default filled in, is written to "
        "`<run dir>/config.yaml` and stored in every checkpoint.",
        "",
        "Contents: "
        + ", ".join(
            f"[{heading.replace('`', '')}](#{_anchor(heading)})" for _, heading, _cls in SECTIONS
        )
        + ", [loss parameters](#loss-parameters), [model options](#model-options), "
        "[dataset options](#dataset-options).",
        "",
    ]


def _schema_section(prefix: str, heading: str, cls: type[BaseModel]) -> list[str]:
    """One section of the schema: a table of its keys."""
    out = [f"## {heading}", "", _first_line(cls), ""]
    rows = []
    for name, field in cls.model_fields.items():
        rows.append(
            [
                f"`{prefix}{name}`",
                format_type(field.annotation),
                _default(field),
                _constraints(field),
                _describe(field),
            ]
        )
    out += _table(["Key", "Type", "Default", "Allowed", "Description"], rows)
    if cls.model_config.get("extra") == "allow":
        extra = {
            ModelConfig: "Any other key is an option of the chosen model; see "
            "[model options](#model-options).",
            LossConfig: "Any other key is a parameter of the chosen loss; see "
            "[loss parameters](#loss-parameters).",
        }[cls]
        out += ["", extra]
    out.append("")
    return out


def _loss_parameters(losses: dict[str, Any]) -> list[str]:
    """Each loss: what it reads, its terms, its parameters and its default search space."""
    from chanloss.losses import loss_spec

    out = [
        "## Loss parameters",
        "",
        "The keys of a `losses` entry besides `name`, `weight` and `lr`. Parameters marked "
        "*filled in by the trainer* are taken from the model and the data "
        f"({', '.join(f'`{p}`' for p in CONTEXT_PARAMS)}) unless the entry sets them. A loss's "
        "own term weights (e.g. MC-Loss `alpha`, `beta`) are applied inside the loss; the "
        "entry's `weight` multiplies the result.",
        "",
    ]
    for name in sorted(losses):
        cls = losses[name]
        out += [
            f"### `{name}`: {cls.__name__}",
            "",
            _first_line(cls),
            "",
            f"Reads the model's `{cls.consumes}`; terms and their weights: "
            + _terms_line(name)
            + ".",
            "",
        ]
        spec = loss_spec(name)
        context = {"num_classes": 10, "num_channels": 40, "embedding_dim": 16}
        build = functools.partial(spec.build, context)
        options = [(p.name, _EMPTY if p.required else p.default) for p in spec.params.values()]
        out += _table(
            ["Parameter", "Default", "Allowed"], _option_rows(options, CONTEXT_PARAMS, build)
        )
        out += ["", _search_line(spec.search_space)]
        out.append("")
    return out


def _model_options(models: dict[str, Any]) -> list[str]:
    """Each built-in model's options."""
    from chanloss.models import create_model

    out = [
        "## Model options",
        "",
        "The keys of `model` besides `name`. `num_classes` and `in_channels` come from the "
        "data. `timm:NAME` and `torchvision:NAME` models (when the package is installed) take "
        "`layer` (the module whose output is the feature map), `classifier` (the final "
        "linear layer), `probe_size` and the package's own keyword arguments.",
        "",
    ]
    for name in sorted(models):
        factory = models[name]
        out += [f"### `{name}`", "", _first_line(factory), ""]
        build = functools.partial(create_model, name, num_classes=10, in_channels=3)
        rows = _signature_rows(factory, ("num_classes", "in_channels"), (), build)
        out += _table(["Option", "Default", "Allowed"], rows) if rows else ["No options."]
        out.append("")
    return out


def _dataset_options(datasets: dict[str, Any]) -> list[str]:
    """Each built-in data set's options."""
    out = [
        "## Dataset options",
        "",
        "The keys of `data.options`. `data.root` is the directory holding the files of the "
        "data sets that are not bundled.",
        "",
    ]
    for name in sorted(datasets):
        loader = datasets[name]
        out += [f"### `{name}`", "", _first_line(loader), ""]
        rows = _signature_rows(loader, ("root",))
        out += _table(["Option", "Default", "Allowed"], rows) if rows else ["No options."]
        out.append("")
    return out


def _search_line(space: dict[str, Any]) -> str:
    """A loss's default search space for ``chanloss tune`` (its spec's ``search_space``)."""
    from chanloss.losses.search import describe

    if not space:
        return (
            "`chanloss tune` searches nothing of this loss unless the config's `search:` adds it."
        )
    items = "; ".join(f"`{k}` {describe(v)}" for k, v in space.items())
    note = "; `weight` is the entry's multiplier" if "weight" in space else ""
    return (
        f"Default search space of `chanloss tune`: {items}{note}. A config's `search:` block "
        "narrows or overrides it (docs/tuning.md)."
    )


def _terms_line(name: str) -> str:
    """The loss's terms with their default weights (from an instance built with defaults)."""
    from chanloss.losses import create_loss

    context = {"num_classes": 10, "num_channels": 40, "embedding_dim": 8}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss = create_loss(name, context=context)
    except (TypeError, ValueError):  # a loss that cannot be built without user parameters
        return "see its docstring"
    return ", ".join(f"`{t}` (default weight {format_value(w)})" for t, w in loss.weights.items())


def _builtin(registry: dict[str, Any]) -> dict[str, Any]:
    """The entries of a registry defined in the ``chanloss`` package (not by user code)."""
    return {
        k: v for k, v in registry.items() if getattr(v, "__module__", "").startswith("chanloss.")
    }


def builtin_losses() -> dict[str, type]:
    """Every loss registered by the ``chanloss`` package itself, by config name."""
    from chanloss.losses import LOSSES  # importing the package registers every loss

    return _builtin(LOSSES)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.strip().replace(" ", "-")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the reference, or with ``--check FILE`` exit 1 if FILE differs from it."""
    parser = argparse.ArgumentParser(
        prog="python -m chanloss.config.reference", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", metavar="FILE", help="compare FILE with the reference")
    args = parser.parse_args(argv)
    text = render()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    path = Path(args.check)
    if not path.is_file() or path.read_text() != text:
        print(f"{path} is out of date; regenerate it with: {COMMAND}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
