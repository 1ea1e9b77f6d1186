"""Using a trained model: :func:`load_model`, :func:`predict` and :func:`export_model`.

A checkpoint (``last.pt``/``best.pt`` of a run) holds the resolved config, the weights and
the run's preprocessing in ``meta["preprocessing"]``: how an image
file is read (colour, size, resize mode) and the per-channel normalisation of the training
split. :func:`load_model` rebuilds the network (and, for a margin loss or L-GM, the loss head
whose scores replace the classifier, as in training) as a :class:`TrainedModel` in eval mode::

    model = chanloss.load_model("runs/digits-cc/best.pt")
    print(model.predict(["seven.png"], topk=3))

Checkpoints written before the preprocessing was stored load with a warning: it is rebuilt
from the run's data set (which must then be available, as for ``chanloss eval``).
"""

from __future__ import annotations

import contextlib
import csv
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from chanloss.config import ConfigError, TrainConfig
from chanloss.core.atomic import json_text
from chanloss.core.errors import InferenceError
from chanloss.run.checkpoint import CheckpointError

EXPORT_FORMATS = ("torchscript", "onnx")
_SUFFIX = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
_NAMES = {"torchscript": "TorchScript", "onnx": "ONNX"}
_TORCHSCRIPT = (".pt", ".pth", ".ts")


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes a model input: what a checkpoint stores.

    A file is read as the run's data set read it for evaluation: opened with Pillow, converted
    to ``colour`` (``"L"`` grey or ``"RGB"``), brought to ``image_size`` ``(height, width)`` by
    ``resize_mode`` (``"crop"``: scale to cover and cut the centre; ``"stretch"``: ignore the
    aspect ratio) or, with ``shorter_side`` R (the image-file option ``resize``), scaled to R
    and centre-cropped (:func:`chanloss.data.files.eval_pixels`), and scaled to ``[0, 1]``.
    The model then applies ``batch_resize`` (``data.augment.resize``, when set) and the
    per-channel ``mean``/``std`` of the training split, as in evaluation during training.
    """

    colour: str | None
    image_size: tuple[int, int]
    resize_mode: str
    shorter_side: int | None
    batch_resize: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> Preprocessing:
        """The preprocessing stored in a checkpoint; a malformed entry is a CheckpointError."""
        try:
            batch_resize, shorter = raw["batch_resize"], raw["shorter_side"]
            result = cls(
                colour=None if raw["colour"] is None else str(raw["colour"]),
                image_size=(int(raw["image_size"][0]), int(raw["image_size"][1])),
                resize_mode=str(raw["resize_mode"]),
                shorter_side=None if shorter is None else int(shorter),
                batch_resize=None
                if batch_resize is None
                else (int(batch_resize[0]), int(batch_resize[1])),
                mean=tuple(float(m) for m in raw["mean"]),
                std=tuple(float(s) for s in raw["std"]),
            )
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{source}: malformed meta.preprocessing ({type(err).__name__}: {err})"
            ) from None
        if len(result.mean) != len(result.std) or not result.mean:
            raise CheckpointError(f"{source}: meta.preprocessing has mismatched mean/std")
        return result

    def to_dict(self) -> dict[str, Any]:
        """As primitives (lists for tuples), the form stored in checkpoints and exports."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def load_image(self, path: str | Path) -> Tensor:
        """The image file ``path`` as a float32 ``(C, H, W)`` tensor in ``[0, 1]``, of
        ``image_size``: the input :meth:`TrainedModel.forward` expects."""
        from PIL import UnidentifiedImageError

        from chanloss.data.base import DatasetError, DatasetFileNotFoundError
        from chanloss.data.files import ImageSpec, eval_pixels

        path = Path(path)
        if self.colour is None:
            raise InferenceError(
                f"this model takes {len(self.mean)}-channel input, which is not read from image "
                "files (only 1-channel grey or 3-channel RGB)"
            )
        spec = ImageSpec(self.image_size, self.shorter_side, self.resize_mode, self.colour)
        if path.is_dir():
            raise InferenceError(f"{path} is a directory, expected an image file")
        try:
            array = eval_pixels(path, spec, "predict")
        except DatasetFileNotFoundError:
            raise InferenceError(f"image not found: {path}") from None
        except DatasetError as err:
            if isinstance(err.__cause__, UnidentifiedImageError):
                raise InferenceError(
                    f"{path} is not an image Pillow can read (expected png, jpg, ...)"
                ) from None
            raise InferenceError(str(err)) from None
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


class TrainedModel(nn.Module):
    """A trained classifier with its preprocessing, in eval mode (see :func:`load_model`).

    ``model(x)`` takes images ``(B, C, H, W)`` at ``preprocessing.image_size``, float in
    ``[0, 1]`` or uint8 ``0..255``, and returns the class scores ``(B, K)``: the run's evaluation
    resize and normalisation, the network, then the classifier, or the loss head's
    ``logits(embedding)`` for a margin loss or L-GM (as the trainer scores accuracy).
    ``network`` is the backbone (returning ``ModelOutput``), ``class_names`` the class labels.
    """

    def __init__(
        self,
        network: nn.Module,
        head: nn.Module | None,
        preprocessing: Preprocessing,
        class_names: Sequence[str],
    ) -> None:
        from chanloss.data import build_augmentation

        super().__init__()
        self.network = network
        self.head = head
        self.preprocessing = preprocessing
        self.class_names = [str(c) for c in class_names]
        self.transform = build_augmentation(
            train=False,
            mean=preprocessing.mean,
            std=preprocessing.std,
            resize=preprocessing.batch_resize,
        )
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        from chanloss.data import to_float_images

        out = self.network(self.transform(to_float_images(images)))
        return out.logits if self.head is None else self.head.logits(out.embedding)

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return next(self.network.parameters()).device

    @torch.no_grad()
    def predict(
        self, paths: Sequence[str | Path] | str | Path, *, topk: int = 1, batch_size: int = 64
    ) -> list[Prediction]:
        """The ``topk`` most probable classes of each image file (folders are searched for
        image files, recursively); see :func:`predict`."""
        return predict(self, paths, topk=topk, batch_size=batch_size)


@dataclass(frozen=True)
class Prediction:
    """The top classes of one image, most probable first (softmax of the class scores)."""

    path: str
    classes: tuple[str, ...]
    indices: tuple[int, ...]
    probabilities: tuple[float, ...]


def load_model(path: str | Path, *, device: str = "cpu") -> TrainedModel:
    """The trained model of checkpoint ``path`` in eval mode, with its preprocessing.

    ``path`` is a checkpoint file or a run directory (its ``best.pt``, else its ``last.pt``).
    ``device``: cpu (default), cuda, cuda:N or auto. A checkpoint written before the
    preprocessing was stored warns and rebuilds it from the run's data set.
    """
    from chanloss.run.builders import resolve_device
    from chanloss.run.loader import load_run, read_checkpoint

    stored = read_checkpoint(path, device="cpu")
    path = stored.path
    meta = stored.meta
    raw = meta.get("preprocessing")
    preprocessing = (
        Preprocessing.from_dict(raw, str(path))
        if raw is not None
        else _rebuilt_preprocessing(stored.config, path)
    )
    loaded = load_run(stored)
    slot = loaded.head
    names = meta.get("class_names") or [str(i) for i in range(stored.num_classes)]
    model = TrainedModel(loaded.model, None if slot is None else slot.loss, preprocessing, names)
    return model.to(resolve_device(device))


def _rebuilt_preprocessing(config: TrainConfig, path: Path) -> Preprocessing:
    from chanloss.run.builders import build_data, run_preprocessing

    warnings.warn(
        f"{path} was written before checkpoints stored their preprocessing; rebuilding it "
        f"(normalisation, image size) from the run's data set {config.data.name!r}",
        UserWarning,
        stacklevel=3,
    )
    try:
        bundle = build_data(config)
    except (ConfigError, OSError) as err:
        raise CheckpointError(
            f"{path} stores no preprocessing and the run's data set could not be rebuilt to "
            f"recover it: {err}"
        ) from None
    return Preprocessing.from_dict(run_preprocessing(config, bundle), str(path))


def image_files(paths: Sequence[str | Path] | str | Path) -> list[Path]:
    """The image files named by ``paths``: files as given, folders searched recursively for
    files with an image extension (sorted). A missing path, or no image at all, is an error."""
    from chanloss.data.datasets import IMAGE_EXTENSIONS

    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found += sorted(
                p
                for p in entry.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(entry).parts)
            )
        elif entry.exists():
            found.append(entry)
        else:
            raise InferenceError(f"image not found: {entry}")
    if not found:
        raise InferenceError(
            f"no image files in {', '.join(map(str, paths))} (expected {', '.join(IMAGE_EXTENSIONS)})"
        )
    return found


def predict(
    model: TrainedModel,
    paths: Sequence[str | Path] | str | Path,
    *,
    topk: int = 1,
    batch_size: int = 64,
) -> list[Prediction]:
    """The ``topk`` most probable classes of every image in ``paths`` (files or folders)."""
    k = len(model.class_names)
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= k:
        raise InferenceError(f"topk must be an integer in [1, {k}] (the classes), got {topk!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InferenceError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    files = image_files(paths)
    results: list[Prediction] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            batch = torch.stack([model.preprocessing.load_image(p) for p in chunk])
            probs = model(batch.to(model.device)).float().softmax(dim=1)
            top = probs.topk(topk, dim=1)
            for file, values, indices in zip(
                chunk, top.values.tolist(), top.indices.tolist(), strict=True
            ):
                results.append(
                    Prediction(
                        str(file),
                        tuple(model.class_names[i] for i in indices),
                        tuple(indices),
                        tuple(values),
                    )
                )
    return results


def write_predictions(predictions: Sequence[Prediction], path: str | Path) -> None:
    """``path`` as CSV: ``path, class_1, probability_1, ..., class_K, probability_K``."""
    path = Path(path)
    k = len(predictions[0].classes) if predictions else 1
    header = ["path"]
    for rank in range(1, k + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    with _atomic_write(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for p in predictions:
            row: list[Any] = [p.path]
            for name, prob in zip(p.classes, p.probabilities, strict=True):
                row += [name, f"{prob:.6g}"]
            writer.writerow(row)


def export_model(
    checkpoint: str | Path, out: str | Path | None = None, *, format: str | None = None
) -> Path:
    """Export a checkpoint's :class:`TrainedModel` (images in ``[0, 1]`` -> class scores).

    ``format``: ``"torchscript"`` (``torch.jit.trace``; the file holds ``chanloss.json`` with
    the preprocessing and class names, see ``torch.jit.load(..., _extra_files=...)``) or
    ``"onnx"`` (needs the ``onnx`` package; input ``images``, output ``scores``, a dynamic batch
    axis, the same JSON in the metadata property ``chanloss``); ``None``: from the suffix of
    ``out`` (``.onnx``: ONNX, else TorchScript), and a format that contradicts the suffix is
    refused. ``out`` defaults to the checkpoint's path with ``.torchscript.pt`` or ``.onnx``
    (``checkpoint`` may be a run directory: its ``best.pt``, else its ``last.pt``). Returns
    the written path.
    """
    format = export_format(out, format)
    if format not in EXPORT_FORMATS:
        raise InferenceError(
            f"unknown export format {format!r}; expected one of {', '.join(EXPORT_FORMATS)}"
        )
    if format == "onnx":
        try:
            import onnx
        except ImportError:
            raise InferenceError("ONNX export needs the onnx package: pip install onnx") from None
    from chanloss.run.loader import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint)  # a run directory: its best.pt (or last.pt)
    model = load_model(checkpoint)
    target = Path(out) if out is not None else checkpoint.with_suffix(_SUFFIX[format])
    info = json_text(
        {"preprocessing": model.preprocessing.to_dict(), "class_names": model.class_names},
        indent=None,
    )
    pre = model.preprocessing
    example = torch.rand(2, len(pre.mean), *pre.image_size)
    with warnings.catch_warnings():  # shape checks traced as constants: the input size is fixed
        warnings.simplefilter("ignore")
        if format == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(model, example, check_trace=False)
            with _atomic_write(target, "wb") as f:
                torch.jit.save(traced, f, _extra_files={"chanloss.json": info})
        else:
            buffer = _onnx_bytes(model, example)
            proto = onnx.load_from_string(buffer)
            entry = proto.metadata_props.add()
            entry.key, entry.value = "chanloss", info
            with _atomic_write(target, "wb") as f:
                f.write(proto.SerializeToString())
    return target


def export_format(out: str | Path | None, format: str | None) -> str:
    """The export format of ``out``: ``format`` when given (refused when the file's suffix
    says the other format: ``.onnx`` is ONNX, ``.pt``/``.pth``/``.ts`` TorchScript), else the
    one its suffix says (``.onnx``: ONNX; anything else: TorchScript)."""
    suffix = Path(out).suffix.lower() if out is not None else ""
    said = "onnx" if suffix == ".onnx" else "torchscript" if suffix in _TORCHSCRIPT else None
    if format is None:
        return said or "torchscript"
    if said is not None and said != format and format in EXPORT_FORMATS:
        raise InferenceError(
            f"--out {out}: a {suffix} file is {_NAMES[said]}, but --format {format} was asked "
            f"for; name the file {Path(out).stem}{_SUFFIX[format]}, or leave --format out"
        )
    return format


def _onnx_bytes(model: TrainedModel, example: Tensor) -> bytes:
    """The TorchScript-based exporter (``dynamo=False``): the torch.export-based one takes
    about 30 s even for a tiny network on CPU."""
    import io

    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (example,),
        buffer,
        dynamo=False,
        input_names=["images"],
        output_names=["scores"],
        dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}},
    )
    return buffer.getvalue()


@contextlib.contextmanager
def _atomic_write(path: Path, mode: str) -> Iterator[Any]:
    """A file object whose content replaces ``path`` only once it is complete."""
    from chanloss.run.run_dir import atomic_open

    if not path.parent.is_dir():
        raise InferenceError(f"cannot write {path}: the directory does not exist")
    with atomic_open(path, mode) as f:
        yield f


__all__ = [
    "EXPORT_FORMATS",
    "InferenceError",
    "Prediction",
    "Preprocessing",
    "TrainedModel",
    "export_model",
    "image_files",
    "load_model",
    "predict",
    "write_predictions",
]
