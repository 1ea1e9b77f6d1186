"""``cub200``: CUB-200-2011 (Wah et al. 2011), 200 bird species, from its image files and index
tables; listed without decoding for stream mode (:mod:`chanloss.data.files`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from chanloss.core.validation import check_int
from chanloss.data.base import DatasetError, register_dataset, register_files
from chanloss.data.files import FileSplits, ImageFiles, image_spec, in_memory
from chanloss.data.layout import as_map, find_base, id_text, int_pair, need_root, read_table


@register_files("cub200")
def list_cub200(
    *,
    root: str | None = None,
    image_size: int | Sequence[int] = 224,
    resize: int | None = None,
    resize_mode: str = "crop",
    num_workers: int | None = None,
) -> FileSplits:
    """CUB-200-2011 (Wah et al. 2011): 5,994 train / 5,794 test images of 200 bird species.

    ``root`` is the directory holding ``CUB_200_2011/`` or that directory itself, with
    ``images.txt`` (``<image_id> <path>``), ``image_class_labels.txt`` (``<image_id>
    <class_id>``, 1-based), ``train_test_split.txt`` (``<image_id> <0|1>``, 1 = train),
    ``classes.txt`` (``<class_id> <name>``) and ``images/<path>``. ``image_size``: the size the
    model sees; ``resize``: the shorter side before cropping (the fine-grained recipe, e.g. 512
    for 448 px crops; ``chanloss.data.files``). In memory mode images are decoded in
    ``num_workers`` threads (default ``min(8, cpu_count)``).
    """
    name = "cub200"
    spec = image_spec(image_size, resize, resize_mode, "RGB")
    if num_workers is not None:
        num_workers = check_int("num_workers", num_workers, low=0)
    base = find_base(need_root(root, name, "CUB_200_2011/"), "CUB_200_2011", "images.txt", name)
    classes_file = base / "classes.txt"
    classes = as_map(
        read_table(classes_file, "<class_id> <class_name>", id_text, name), classes_file, name
    )
    ids = sorted(classes)
    if ids != list(range(1, len(ids) + 1)):
        raise DatasetError(f"{name}: {classes_file}: expected class ids 1..{len(ids)}, got {ids}")
    images_file = base / "images.txt"
    images = as_map(
        read_table(images_file, "<image_id> <image_path>", id_text, name), images_file, name
    )
    labels_file = base / "image_class_labels.txt"
    labels = as_map(
        read_table(labels_file, "<image_id> <class_id>", int_pair, name), labels_file, name
    )
    split_file = base / "train_test_split.txt"
    split = as_map(
        read_table(split_file, "<image_id> <0|1>", lambda p: int_pair(p, allowed=(0, 1)), name),
        split_file,
        name,
    )
    for table, path in ((labels, labels_file), (split, split_file)):
        missing = sorted(set(images) - set(table))
        if missing:
            raise DatasetError(
                f"{name}: {path}: no entry for image id {missing[0]} (listed in {images_file}); "
                f"{len(missing)} missing"
            )
    for image_id, class_id in labels.items():
        if not 1 <= class_id <= len(ids):
            raise DatasetError(
                f"{name}: {labels_file}: image id {image_id} has class id {class_id}, expected "
                f"1..{len(ids)} (from {classes_file})"
            )
    order = sorted(images)
    paths = [base / "images" / images[i] for i in order]
    targets = torch.tensor([labels[i] - 1 for i in order], dtype=torch.int64)
    is_train = [split[i] == 1 for i in order]
    mask = torch.tensor(is_train)
    return FileSplits(
        name,
        ImageFiles([p for p, t in zip(paths, is_train, strict=True) if t], targets[mask]),
        ImageFiles([p for p, t in zip(paths, is_train, strict=True) if not t], targets[~mask]),
        [classes[i] for i in ids],
        spec,
        num_workers,
    )


load_cub200 = register_dataset("cub200")(in_memory(list_cub200))
