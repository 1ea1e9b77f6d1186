"""``finegrained``: a procedural fine-grained image set (ours; no downloads).

Every image shows the same coarse object, a "bird": an elliptic body with a round head and a
thin tail, drawn from one colour distribution for all classes, on a cluttered background.
Classes differ only in one small marking: class ``k`` puts a marking of type ``k // L`` at
part location ``k % L`` of the object (``L = num_locations``). A marking type is a colour of
an 8-colour palette, first as a filled disk and (types 8-15) as a ring; the part locations
(head, back, tail, belly, wing, breast, nape, rump) are fixed in the object's own frame, so
they move, turn, scale and mirror with the object. Everything else is nuisance shared by all
classes: object position, size, aspect, rotation and left/right orientation, body and
background colour, low-frequency background clutter, brightness, pixel noise and, with
``difficulty > 0``, up to three distractor spots of palette colours on the background. A
classifier must therefore find the marking on the object and tell where on the object it is.

``difficulty`` in ``[0, 1]`` scales the nuisance ranges up and the marking's size and contrast
down. Generation is vectorised in torch (chunks of ``CHUNK`` images) from one
``torch.Generator`` seeded with ``seed``, so the images depend only on the options, not on the
global RNG; the default 4,000 images at 32 px take about a second.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from chanloss.core.validation import check_float, check_int
from chanloss.data.base import Splits, register_dataset

CHUNK = 1024

PALETTE_NAMES = ("red", "blue", "yellow", "green", "magenta", "cyan", "white", "black")
PALETTE = torch.tensor(
    [
        [0.95, 0.10, 0.10],
        [0.10, 0.30, 0.95],
        [0.95, 0.90, 0.10],
        [0.10, 0.75, 0.20],
        [0.90, 0.15, 0.85],
        [0.10, 0.90, 0.95],
        [1.00, 1.00, 1.00],
        [0.02, 0.02, 0.02],
    ]
)
PATTERNS = ("disk", "ring")
NUM_TYPES = len(PALETTE_NAMES) * len(PATTERNS)
# (forward, up) in units of the body's half-length; the head is centred at (0.98, 0.32).
LOCATION_NAMES = ("head", "back", "tail", "belly", "wing", "breast", "nape", "rump")
LOCATIONS = torch.tensor(
    [
        [1.08, 0.38],
        [0.05, 0.38],
        [-0.80, 0.05],
        [0.05, -0.35],
        [-0.35, 0.12],
        [0.62, -0.15],
        [0.70, 0.28],
        [-0.55, -0.22],
    ]
)
BODY_COLOUR = (0.55, 0.42, 0.28)
BACKGROUND_COLOUR = (0.45, 0.55, 0.45)
DISTRACTORS = 3


def class_names(num_classes: int, num_locations: int) -> list[str]:
    """``"<colour>-<pattern>@<location>"`` for every class."""
    names = []
    for k in range(num_classes):
        kind, loc = divmod(k, num_locations)
        pattern, colour = divmod(kind, len(PALETTE_NAMES))
        names.append(f"{PALETTE_NAMES[colour]}-{PATTERNS[pattern]}@{LOCATION_NAMES[loc]}")
    return names


def _uniform(n: int, g: torch.Generator, *shape: int) -> Tensor:
    """Uniform in [-1, 1)."""
    return torch.rand((n, *shape), generator=g) * 2 - 1


def sample_params(
    labels: Tensor, size: int, difficulty: float, g: torch.Generator
) -> dict[str, Tensor]:
    """Nuisance parameters (class-independent) and the labels for ``len(labels)`` images."""
    n, d = labels.shape[0], difficulty
    params = {
        "label": labels,
        "center": 0.5 + (0.04 + 0.10 * d) * _uniform(n, g, 2),
        "length": 0.28 * (1 + (0.08 + 0.17 * d) * _uniform(n, g)),
        "aspect": 0.55 * (1 + 0.1 * _uniform(n, g)),
        "angle": (0.15 + 0.45 * d) * _uniform(n, g),
        "mirror": torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0),
        "body": torch.tensor(BODY_COLOUR) + (0.03 + 0.04 * d) * torch.randn(n, 3, generator=g),
        "background": torch.tensor(BACKGROUND_COLOUR) + 0.1 * torch.randn(n, 3, generator=g),
        "clutter": (0.04 + 0.08 * d) * torch.randn(n, 3, 4, 4, generator=g),
        "brightness": 1 + (0.05 + 0.15 * d) * _uniform(n, g),
        "noise": (0.02 + 0.05 * d) * torch.randn(n, 3, size, size, generator=g),
        "mark_radius": (0.22 - 0.07 * d) * (1 + 0.1 * _uniform(n, g)),
        "mark_shift": 0.04 * _uniform(n, g, 2),
        "distractor_on": torch.rand(n, DISTRACTORS, generator=g) < 0.6 * d,
        "distractor_xy": torch.rand(n, DISTRACTORS, 2, generator=g),
        "distractor_colour": torch.randint(0, len(PALETTE_NAMES), (n, DISTRACTORS), generator=g),
    }
    params["mark_contrast"] = torch.full((n,), 1.0 - 0.4 * d)
    return params


def _soft(signed_distance: Tensor, pixels: Tensor) -> Tensor:
    """Anti-aliased inside-mask from a signed distance (object units, > 0 inside)."""
    return torch.sigmoid(signed_distance * pixels * 2.0)


def render(params: dict[str, Tensor], size: int, num_locations: int) -> Tensor:
    """Images ``(n, 3, size, size)`` in ``[0, 1]`` for the parameters of ``sample_params``."""
    n = params["label"].shape[0]
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    x = coords.view(1, 1, size) - params["center"][:, 0].view(n, 1, 1)
    y = params["center"][:, 1].view(n, 1, 1) - coords.view(1, size, 1)  # up is positive
    cos = torch.cos(params["angle"]).view(n, 1, 1)
    sin = torch.sin(params["angle"]).view(n, 1, 1)
    length = params["length"].view(n, 1, 1)
    u = (cos * x + sin * y) * (params["mirror"].view(n, 1, 1) / length)
    v = (cos * y - sin * x) / length
    pixels = length * size  # pixels per object unit

    aspect = params["aspect"].view(n, 1, 1)
    body = _soft(1 - torch.hypot(u, v / aspect), pixels)
    head = _soft(0.34 - torch.hypot(u - 0.98, v - 0.32), pixels)
    tail = _soft(1 - torch.hypot((u + 1.15) / 0.4, v / 0.12), pixels * 0.12)
    shape = torch.maximum(torch.maximum(body, head), tail).unsqueeze(1)

    background = F.interpolate(params["clutter"], size=(size, size), mode="bicubic")
    background += params["background"].view(n, 3, 1, 1)
    body_colour = params["body"].view(n, 3, 1, 1) * (1 + 0.15 * v.unsqueeze(1))
    image = torch.lerp(background, body_colour, shape)

    label = params["label"]
    kind, loc = label // num_locations, label % num_locations
    pattern, colour = kind // len(PALETTE_NAMES), kind % len(PALETTE_NAMES)
    centre = LOCATIONS[loc] + params["mark_shift"]
    radius = params["mark_radius"].view(n, 1, 1)
    dist = torch.hypot(u - centre[:, 0].view(n, 1, 1), v - centre[:, 1].view(n, 1, 1))
    mark = _soft(radius - dist, pixels)
    ring = (pattern == 1).view(n, 1, 1)
    mark = torch.where(ring, mark * (1 - _soft(0.5 * radius - dist, pixels)), mark)
    alpha = (mark * params["mark_contrast"].view(n, 1, 1)).unsqueeze(1)
    image = torch.lerp(image, PALETTE[colour].view(n, 3, 1, 1), alpha)

    spot_r = (params["mark_radius"] * params["length"]).view(n, 1, 1)
    on_background = 1 - shape
    for s in range(DISTRACTORS):
        xy = params["distractor_xy"][:, s]
        d = torch.hypot(
            coords.view(1, 1, size) - xy[:, 0].view(n, 1, 1),
            coords.view(1, size, 1) - xy[:, 1].view(n, 1, 1),
        )
        on = params["distractor_on"][:, s].view(n, 1, 1, 1)
        spot = torch.sigmoid((spot_r - d) * (size * 2.0)).unsqueeze(1) * on_background * on
        colour_s = PALETTE[params["distractor_colour"][:, s]].view(n, 3, 1, 1)
        image = torch.lerp(image, colour_s, spot)

    image.mul_(params["brightness"].view(n, 1, 1, 1)).add_(params["noise"])
    return image.clamp_(0, 1)


def make_finegrained(
    *,
    num_classes: int = 10,
    train_per_class: int = 300,
    test_per_class: int = 100,
    image_size: int = 32,
    difficulty: float = 0.5,
    num_locations: int = 4,
    seed: int = 0,
) -> Splits:
    """Generate the train and test splits (see the module docstring); classes are balanced.

    Train images come first from the generator, then test images; both are ordered by class.
    """
    num_locations = check_int("num_locations", num_locations, low=1, high=len(LOCATION_NAMES))
    num_classes = check_int("num_classes", num_classes, low=2, high=NUM_TYPES * num_locations)
    train_per_class = check_int("train_per_class", train_per_class, low=1)
    test_per_class = check_int("test_per_class", test_per_class, low=1)
    image_size = check_int("image_size", image_size, low=8)
    difficulty = check_float("difficulty", difficulty, low=0.0, high=1.0)
    seed = check_int("seed", seed, low=0)
    g = torch.Generator().manual_seed(seed)

    def split(per_class: int) -> tuple[Tensor, Tensor]:
        labels = torch.arange(num_classes).repeat_interleave(per_class)
        chunks = [
            render(
                sample_params(labels[i : i + CHUNK], image_size, difficulty, g),
                image_size,
                num_locations,
            )
            for i in range(0, labels.shape[0], CHUNK)
        ]
        return torch.cat(chunks), labels

    xtr, ytr = split(train_per_class)
    xte, yte = split(test_per_class)
    return Splits(xtr, ytr, xte, yte, class_names(num_classes, num_locations))


@register_dataset("finegrained")
def load_finegrained(
    *,
    root: str | None = None,
    num_classes: int = 10,
    train_per_class: int = 300,
    test_per_class: int = 100,
    image_size: int = 32,
    difficulty: float = 0.5,
    num_locations: int = 4,
    data_seed: int = 0,
) -> Splits:
    """The synthetic fine-grained set; ``data_seed`` seeds the images (``build_datasets``'s own
    ``seed`` only draws the validation split). ``root`` is not used."""
    return make_finegrained(
        num_classes=num_classes,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        image_size=image_size,
        difficulty=difficulty,
        num_locations=num_locations,
        seed=data_seed,
    )


__all__ = ["class_names", "make_finegrained", "render", "sample_params"]
