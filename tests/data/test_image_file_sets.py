"""The image-file loaders in memory mode: CUB-200-2011 (chanloss.data.cub200) and image folders
(chanloss.data.image_folder)."""

import numpy as np
import pytest
import torch
from PIL import Image

from chanloss.data import (
    DatasetError,
    DatasetFileNotFoundError,
    build_datasets,
)

# ---------------------------------------------------------------- CUB-200-2011


def _three_band_png(path, size=(60, 30)):
    """Left quarter red, middle half green, right quarter blue (width, height)."""
    w, h = size
    array = np.zeros((h, w, 3), np.uint8)
    array[:, : w // 4, 0] = 255
    array[:, w // 4 : 3 * w // 4, 1] = 255
    array[:, 3 * w // 4 :, 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _cub_tree(root):
    base = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split = [], [], []
    for i in range(6):
        class_id = i % 3 + 1
        rel = f"{classes[class_id - 1]}/img_{i}.png"
        _three_band_png(base / "images" / rel, size=(60 + 4 * i, 30))
        images.append(f"{i + 1} {rel}")
        labels.append(f"{i + 1} {class_id}")
        split.append(f"{i + 1} {1 if i < 4 else 0}")
    (base / "classes.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return base


def test_cub200_tree_loads_with_crop_and_stretch(tmp_path):
    base = _cub_tree(tmp_path)
    for root in (tmp_path, base):
        bundle = build_datasets("cub200", root=root, image_size=16, num_workers=2)
        assert (len(bundle.train), len(bundle.test)) == (4, 2)
        assert bundle.train.labels.tolist() == [0, 1, 2, 0] and bundle.test.labels.tolist() == [
            1,
            2,
        ]
        assert bundle.class_names[1] == "002.Laysan_Albatross" and bundle.num_classes == 3
        assert bundle.image_size == (16, 16) and bundle.in_channels == 3
    assert bundle.train.images.dtype == torch.uint8 and bundle.test.images.dtype == torch.uint8
    crop = bundle.train[0][0]  # 60x30 -> 32x16 -> centre 16x16: the green half only
    assert crop[1, :, 1:-1].min() > 0.99 and crop[0].max() < 0.2 and crop[2].max() < 0.2
    stretched = build_datasets("cub200", root=base, image_size=(8, 16), resize_mode="stretch")
    image = stretched.train[0][0]
    assert image.shape == (3, 8, 16)
    assert image[0, :, 0].min() > 0.9 and image[2, :, -1].min() > 0.9 and image[1, :, 8].min() > 0.9
    # every item is the float image of a plain Pillow decode + resize of its file
    files = [
        base / "images" / line.split()[1]
        for line in (base / "images.txt").read_text().split("\n")
        if line
    ]
    for split, ids in ((stretched.train, [0, 1, 2, 3]), (stretched.test, [4, 5])):
        for i, file_index in enumerate(ids):
            assert torch.equal(split[i][0], _pillow_reference(files[file_index], (8, 16)))


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        (
            "train_test_split.txt",
            "1 1\n2 1\n3 x\n",
            r"CUB_200_2011/train_test_split.txt: line 3: expected '<image_id> <0\|1>', got '3 x'",
        ),
        (
            "train_test_split.txt",
            "1 1\n2 2\n",
            r"train_test_split.txt: line 2: expected '<image_id> <0\|1>', got '2 2'",
        ),
        (
            "image_class_labels.txt",
            "1 1\n2\n",
            r"image_class_labels.txt: line 2: expected '<image_id> <class_id>', got '2'",
        ),
        ("image_class_labels.txt", "1 1\n1 2\n", "image_class_labels.txt: id 1 appears twice"),
        (
            "image_class_labels.txt",
            "1 1\n2 1\n3 1\n4 1\n5 1\n6 9\n",
            r"image id 6 has class id 9, expected 1..3",
        ),
        (
            "train_test_split.txt",
            "1 1\n2 1\n3 1\n4 1\n5 0\n",
            r"train_test_split.txt: no entry for image id 6 \(listed in .*images.txt\)",
        ),
        (
            "classes.txt",
            "",
            r"classes.txt: no records \(expected lines '<class_id> <class_name>'\)",
        ),
        ("classes.txt", "1 a\n3 b\n", r"classes.txt: expected class ids 1..2, got \[1, 3\]"),
    ],
)
def test_cub200_malformed_index_files_name_the_file_and_line(tmp_path, file, content, message):
    base = _cub_tree(tmp_path)
    (base / file).write_text(content)
    with pytest.raises(DatasetError, match=message):
        build_datasets("cub200", root=tmp_path, image_size=8)


def test_cub200_missing_files_and_bad_images_name_the_file(tmp_path):
    base = _cub_tree(tmp_path)
    (base / "train_test_split.txt").unlink()
    with pytest.raises(
        DatasetFileNotFoundError,
        match=r"CUB_200_2011/train_test_split.txt: file not found \(expected lines '<image_id> <0\|1>'\)",
    ):
        build_datasets("cub200", root=tmp_path, image_size=8)
    _cub_tree(tmp_path / "b")
    image = tmp_path / "b/CUB_200_2011/images/002.Laysan_Albatross/img_1.png"
    image.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"cub200: cannot read image .*img_1.png"):
        build_datasets("cub200", root=tmp_path / "b", image_size=8, num_workers=0)
    image.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=r"cub200: cannot read image .*img_1.png"):
        build_datasets("cub200", root=tmp_path / "b", image_size=8, num_workers=3)
    image.unlink()
    with pytest.raises(DatasetFileNotFoundError, match=r"image file not found: .*img_1.png"):
        build_datasets("cub200", root=tmp_path / "b", image_size=8)
    with pytest.raises(DatasetFileNotFoundError, match=r"CUB_200_2011/images.txt not found"):
        build_datasets("cub200", root=tmp_path / "b" / "CUB_200_2011" / "images")
    with pytest.raises(ValueError, match="resize_mode must be one of 'crop', 'stretch'"):
        build_datasets("cub200", root=tmp_path, resize_mode="pad")


# ---------------------------------------------------------------- image folders


def _folder_tree(root):
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255), "bird": (0, 255, 0)}
    for split, counts in (
        ("train", {"cat": 2, "dog": 3, "bird": 1}),
        ("test", {"dog": 1, "cat": 1}),
    ):
        for name, count in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                ext = ".png" if i % 2 == 0 else ".JPG"
                Image.new("RGB", (12 + i, 10), colours[name]).save(folder / f"{i}{ext}")
            (folder / "notes.txt").write_text("ignored")


def test_image_folder_loads_sorted_classes(tmp_path):
    _folder_tree(tmp_path)
    bundle = build_datasets("image_folder", root=tmp_path, image_size=8)
    assert bundle.class_names == ["bird", "cat", "dog"]
    assert bundle.train.labels.tolist() == [0, 1, 1, 2, 2, 2]
    assert bundle.test.labels.tolist() == [1, 2]
    assert bundle.train.images.shape == (6, 3, 8, 8) and bundle.train.images.dtype == torch.uint8
    # dog images are blue, bird images green (JPEG: approximately)
    assert bundle.train[5][0][2].min() > 0.9 and bundle.train[0][0][1].min() > 0.9
    grey = build_datasets(
        "image_folder", root=tmp_path, image_size=(4, 6), colour="L", resize_mode="stretch"
    )
    assert grey.in_channels == 1 and grey.image_size == (4, 6)
    assert grey.test.images.dtype == torch.uint8 and grey.test.images.shape == (2, 1, 4, 6)
    files = [tmp_path / "test" / "cat" / "0.png", tmp_path / "test" / "dog" / "0.png"]
    for i, file in enumerate(files):
        assert torch.equal(grey.test[i][0], _pillow_reference(file, (4, 6), "L"))


def _pillow_reference(path, size, colour="RGB"):
    """The float32 (C, H, W) image in [0, 1] of a file stretched to ``size`` by Pillow."""
    with Image.open(path) as image:
        array = np.array(image.convert(colour).resize(size[::-1], Image.Resampling.BILINEAR))
    array = array.reshape(size[0], size[1], -1).transpose(2, 0, 1).astype(np.float32)
    return torch.from_numpy(array / np.float32(255))


def test_image_folder_errors_name_the_file(tmp_path):
    _folder_tree(tmp_path)
    bad = tmp_path / "train" / "cat" / "1.JPG"
    bad.write_bytes(b"")
    with pytest.raises(DatasetError, match=r"image_folder: cannot read image .*cat/1.JPG"):
        build_datasets("image_folder", root=tmp_path, image_size=8)
    bad.unlink()
    (tmp_path / "test" / "fish").mkdir()
    with pytest.raises(DatasetError, match=r"class directory .*test/fish holds no image files"):
        build_datasets("image_folder", root=tmp_path, image_size=8)
    Image.new("RGB", (4, 4)).save(tmp_path / "test" / "fish" / "a.png")
    with pytest.raises(DatasetError, match=r"class 'fish' is not among the train classes"):
        build_datasets("image_folder", root=tmp_path, image_size=8)
    with pytest.raises(DatasetFileNotFoundError, match=r"nowhere.*is not a directory"):
        build_datasets("image_folder", root=tmp_path / "nowhere")
    with pytest.raises(DatasetFileNotFoundError, match=r"image_folder: .*train not found"):
        build_datasets("image_folder", root=tmp_path / "test")
