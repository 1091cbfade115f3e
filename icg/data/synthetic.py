"""Synthetic pedestrians in the Market-1501 layout, with ground-truth part masks.

No real re-ID dataset can be downloaded in a test run or a CPU demo, so this module draws one. The images are
meant to make re-ID learnable but not trivial, in the ways that matter for ICG:

* **Colour alone is not enough.** Identity-level colours come from small palettes, so every shirt colour is
  worn by many identities, and a fraction of the identities come in *colour-swapped pairs*: the partner wears
  the first one's trousers colour on top and its shirt colour below, with the same skin, hair, shoes and bag.
  A globally pooled colour histogram cannot tell such a pair apart; where each colour sits (the parts) can.
* **A clear foreground.** The person is drawn over a camera-specific backdrop (wall, ground, texture) with
  clutter rectangles, some of them in the same palette as the clothes.
* **Realistic nuisances, drawn per image:** misalignment (the person shifted and scaled inside the box), view
  (front, back, left or right profile; a backpack is a pack from behind and two straps from the front, a jacket
  shows the shirt under it only from the front), pose (leg spread, arm swing), a per-camera colour cast and a
  per-image brightness, blur and sensor noise, and, with some probability, an occluder (a car across the bottom,
  a pole, or a passer-by entering from one side). The gallery also holds distractors (id 0, people seen only
  once) and junk (id -1, badly framed detections: a person far too large or too small for the box).

:func:`plan_synthetic` settles every file (split, name, id, camera, appearance, nuisance parameters) from the
seed alone without drawing, so a DataModule can count the training images and ids up front.
:func:`generate_synthetic` draws the plan and writes, under ``root``::

    bounding_box_train/0002_c1s1_000451_03.jpg ...   training identities (disjoint from the test ones)
    query/...                                          one image per (test identity, camera), a couple of cameras
    bounding_box_test/...                              the other test images, distractors (0000_...), junk (-1_...)
    part_masks/<one of the three folders>/<stem>.png   per-pixel part labels (see PartLabel)
    synthetic.json                                     the arguments, written last

Every query has a gallery image of its identity from another camera. Part masks are uint8 PNGs with the ids of
:class:`PartLabel`; occluded pixels are background, so masks say what is *visible*. Masks are drawn with the same
shapes as the image, so they align exactly (before the image's JPEG compression and blur).

Generation is deterministic (same arguments, same numpy and Pillow, byte-identical files), atomic (drawn into a
hidden sibling folder that is renamed into place when complete; concurrent calls with the same arguments, e.g.
from several DDP ranks, all return the one finished folder) and idempotent (a complete generation with the same
arguments is reused; anything else at ``root`` is an error, never deleted). An exception or Ctrl-C removes the
staging folder; a process killed outright leaves its hidden ``.<root name>.partial-<pid>@<host>-*`` sibling
behind, which never becomes ``root`` and is removed by the next call for the same ``root`` (see
:func:`icg.files.remove_orphans`). Files and folders follow the umask.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from pathlib import Path
from typing import Any, Final

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from icg.files import remove_orphans, staging_folder

__all__ = [
    "MASK_FOLDER",
    "METADATA_FILE",
    "PART_LABELS",
    "SPLIT_FOLDERS",
    "Appearance",
    "CameraScene",
    "PartLabel",
    "SyntheticImage",
    "generate_synthetic",
    "plan_synthetic",
    "render_synthetic",
]

Colour = tuple[int, int, int]


class PartLabel(IntEnum):
    """Pixel values of the part masks. Occluded pixels of the person are ``BACKGROUND``."""

    BACKGROUND = 0
    HEAD = 1  # face, hair, hat, neck
    UPPER_BODY = 2  # shirt or jacket, arms, hands
    LEGS = 3  # trousers, shorts or skirt, bare legs
    SHOES = 4
    BAG = 5  # backpack (or its straps) and shoulder bag with its strap


PART_LABELS: Final[dict[int, str]] = {int(label): label.name.lower() for label in PartLabel}
"""Part mask value -> name: ``{0: "background", 1: "head", 2: "upper_body", 3: "legs", 4: "shoes", 5: "bag"}``."""

SPLIT_FOLDERS: Final[dict[str, str]] = {
    "train": "bounding_box_train",
    "query": "query",
    "gallery": "bounding_box_test",
}
"""Split name -> Market-1501 folder name."""

MASK_FOLDER: Final[str] = "part_masks"
METADATA_FILE: Final[str] = "synthetic.json"
# Bumped whenever the drawing or the plan changes, so that an old folder is not mistaken for a new generation.
_FORMAT_VERSION: Final[int] = 1
_JUNK_PID: Final[int] = -1
_DISTRACTOR_PID: Final[int] = 0
_MAX_PID: Final[int] = 9999  # Market-1501 names carry four digits

# Palettes are small on purpose: colours must recur across identities.
_GARMENT: Final[tuple[Colour, ...]] = (
    (235, 235, 228),  # white
    (32, 32, 36),  # black
    (125, 125, 128),  # grey
    (32, 42, 92),  # navy
    (60, 95, 165),  # denim blue
    (190, 35, 40),  # red
    (40, 125, 65),  # green
    (225, 195, 50),  # yellow
    (230, 150, 175),  # pink
    (235, 125, 35),  # orange
    (110, 72, 42),  # brown
    (205, 185, 145),  # beige
    (105, 55, 135),  # purple
)
# Trousers are mostly dark or neutral; weights follow the order of _GARMENT.
_TROUSER_WEIGHTS: Final[tuple[float, ...]] = (1, 4, 2.5, 3, 4, 0.5, 0.7, 0.3, 0.3, 0.3, 1.5, 2, 0.3)
_SKIN: Final[tuple[Colour, ...]] = ((250, 220, 195), (232, 190, 158), (198, 150, 112), (150, 102, 72), (96, 66, 48))
_HAIR: Final[tuple[Colour, ...]] = (
    (24, 20, 20), (58, 40, 30), (108, 74, 46), (215, 185, 120), (168, 168, 164), (135, 62, 32),
)
_SHOES: Final[tuple[Colour, ...]] = ((28, 28, 30), (232, 232, 228), (95, 62, 38), (120, 120, 124), (180, 40, 40))
_BAGS: Final[tuple[Colour, ...]] = (
    (30, 30, 32), (100, 66, 40), (34, 44, 90), (170, 40, 45), (110, 110, 112), (50, 100, 60), (200, 180, 140),
)
_CARS: Final[tuple[Colour, ...]] = ((200, 200, 205), (30, 30, 35), (150, 20, 25), (40, 60, 120), (90, 90, 95))
_VIEWS: Final[tuple[str, ...]] = ("front", "back", "left", "right")
_OCCLUDERS: Final[tuple[str, ...]] = ("car", "pole", "passerby")


@dataclass(frozen=True, kw_only=True)
class Appearance:
    """What one identity wears; fixed across all of its images.

    ``build`` scales the body's width (0.85 slim .. 1.15 broad); ``bag_side`` is the hip (-1 left, +1 right,
    as seen from the front) on which a shoulder bag hangs.
    """

    skin: Colour
    hair: Colour
    hair_style: str  # "short" | "long" | "cap"
    hat: Colour
    shirt: Colour
    shirt_pattern: str  # "plain" | "stripes" | "jacket" (shirt is the jacket, second the shirt under it)
    second: Colour  # stripe colour or the shirt under the jacket
    long_sleeves: bool
    trousers: Colour
    lower: str  # "trousers" | "shorts" | "skirt"
    shoes: Colour
    bag: str  # "none" | "backpack" | "shoulder"
    bag_colour: Colour
    bag_side: int
    build: float


@dataclass(frozen=True, kw_only=True)
class CameraScene:
    """What one camera looks at and how it renders colour.

    ``horizon`` is the row (fraction of the image height) where wall meets ground; ``gain`` the per-channel colour
    cast (R, G, B multipliers); ``noise`` the sensor noise standard deviation in grey levels.
    """

    wall: Colour
    ground: Colour
    horizon: float
    gain: tuple[float, float, float]
    noise: float


@dataclass(frozen=True, kw_only=True)
class SyntheticImage:
    """One planned image: where it goes, who it shows, and every per-image nuisance.

    Geometry is relative to the box, so one plan serves any image size: the person is ``height`` (fraction of
    the image height) tall, its top at row ``top`` and its centre at column ``center_x`` (fractions; values
    outside [0, 1] put part of the person outside the box, as junk images do). ``leg_spread`` is in [0, 1],
    ``arm_swing`` in [-1, 1]. ``occluder`` is ``"none"``, ``"car"``, ``"pole"`` or ``"passerby"``;
    ``occluder_position`` and ``occluder_extent`` (both in [0, 1]) place and size it. ``blur`` is the Gaussian
    blur radius in pixels at an image height of 128. ``seed`` drives the backdrop, its clutter, the
    occluder's colour and the sensor noise.
    """

    split: str  # "train" | "query" | "gallery"
    filename: str
    pid: int  # 0 = distractor, -1 = junk
    camera: int  # 1-based, as in the file name
    appearance: Appearance
    scene: CameraScene
    view: str  # "front" | "back" | "left" | "right" (the direction the person faces in a profile view)
    center_x: float
    top: float
    height: float
    leg_spread: float
    arm_swing: float
    occluder: str
    occluder_position: float
    occluder_extent: float
    brightness: float
    blur: float
    seed: int

    @property
    def folder(self) -> str:
        """The Market-1501 folder of the split, e.g. ``"bounding_box_train"``."""
        return SPLIT_FOLDERS[self.split]

    @property
    def relpath(self) -> str:
        """Path of the image relative to the dataset root."""
        return f"{self.folder}/{self.filename}"

    @property
    def mask_relpath(self) -> str:
        """Path of the part mask relative to the dataset root."""
        return f"{MASK_FOLDER}/{self.folder}/{Path(self.filename).stem}.png"


# ----------------------------------------------------------------------------------------------------------------
# Plan


def _check_range(name: str, value: Sequence[int], low: int) -> tuple[int, int]:
    if len(value) != 2 or not all(isinstance(v, (int, np.integer)) for v in value):
        raise ValueError(f"{name} must be a pair of integers (min, max), got {value!r}")
    lo, hi = int(value[0]), int(value[1])
    if not low <= lo <= hi:
        raise ValueError(f"{name} must satisfy {low} <= min <= max, got {value!r}")
    return lo, hi


def _check_fraction(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return float(value)


def _pick(rng: np.random.Generator, palette: Sequence[Colour], weights: Sequence[float] | None = None) -> Colour:
    if weights is None:
        return palette[int(rng.integers(len(palette)))]
    p = np.asarray(weights, dtype=np.float64)
    return palette[int(rng.choice(len(palette), p=p / p.sum()))]


def _draw_appearance(rng: np.random.Generator, bag_prob: float) -> Appearance:
    shirt = _pick(rng, _GARMENT)
    second = _pick(rng, [c for c in _GARMENT if c != shirt])
    has_bag = rng.random() < bag_prob
    return Appearance(
        skin=_pick(rng, _SKIN),
        hair=_pick(rng, _HAIR),
        hair_style=("short", "long", "cap")[int(rng.choice(3, p=(0.55, 0.3, 0.15)))],
        hat=_pick(rng, _GARMENT),
        shirt=shirt,
        shirt_pattern=("plain", "stripes", "jacket")[int(rng.choice(3, p=(0.55, 0.2, 0.25)))],
        second=second,
        long_sleeves=bool(rng.random() < 0.6),
        trousers=_pick(rng, _GARMENT, _TROUSER_WEIGHTS),
        lower=("trousers", "shorts", "skirt")[int(rng.choice(3, p=(0.7, 0.18, 0.12)))],
        shoes=_pick(rng, _SHOES),
        bag=("backpack", "shoulder")[int(rng.integers(2))] if has_bag else "none",
        bag_colour=_pick(rng, _BAGS),
        bag_side=int(rng.choice((-1, 1))),
        build=round(float(rng.uniform(0.85, 1.15)), 4),
    )


def _draw_identities(
    rng: np.random.Generator, count: int, bag_prob: float, swapped_fraction: float
) -> list[Appearance]:
    appearances = [_draw_appearance(rng, bag_prob) for _ in range(count)]
    order = rng.permutation(count)
    for k in range(round(swapped_fraction * count / 2)):
        source, partner = int(order[2 * k]), int(order[2 * k + 1])
        a = appearances[source]
        appearances[partner] = replace(a, shirt=a.trousers, trousers=a.shirt)
    return appearances


def _draw_scene(rng: np.random.Generator) -> CameraScene:
    # Walls are muted (mixed toward grey) so the person stays the most saturated thing in most images.
    wall = 0.55 * rng.uniform(40, 220, 3) + 0.45 * rng.uniform(90, 170)
    ground = rng.uniform(70, 150) + rng.uniform(-15, 15, 3)
    return CameraScene(
        wall=tuple(int(v) for v in wall),
        ground=tuple(int(v) for v in ground),
        horizon=round(float(rng.uniform(0.55, 0.8)), 4),
        gain=tuple(round(float(g), 4) for g in 1.0 + rng.uniform(-0.15, 0.15, 3)),
        noise=round(float(rng.uniform(2.0, 6.0)), 4),
    )


class _Namer:
    """Market-1501 file names: unique (camera, sequence, frame) per image, frames increasing per camera."""

    def __init__(self, rng: np.random.Generator, num_cameras: int) -> None:
        self._rng = rng
        self._counters = [0] * (num_cameras + 1)

    def __call__(self, pid: int, camera: int) -> str:
        self._counters[camera] += int(self._rng.integers(1, 60))
        sequence, frame = divmod(self._counters[camera], 1_000_000)
        box = int(self._rng.integers(1, 4))
        prefix = "-1" if pid == _JUNK_PID else f"{pid:04d}"
        return f"{prefix}_c{camera}s{sequence + 1}_{frame:06d}_{box:02d}.jpg"


def _draw_image(
    rng: np.random.Generator,
    *,
    split: str,
    pid: int,
    camera: int,
    appearance: Appearance,
    scene: CameraScene,
    namer: _Namer,
    occlusion_prob: float,
) -> SyntheticImage:
    if pid == _JUNK_PID:
        # A bad detection: a close-up of part of a person, or a person far too small for the box.
        if rng.random() < 0.5:
            height, top = rng.uniform(1.5, 2.5), rng.uniform(-1.2, -0.2)
        else:
            height = rng.uniform(0.25, 0.45)
            top = rng.uniform(0.0, 1.0 - height)
        center_x = rng.uniform(0.15, 0.85)
    else:
        height = rng.uniform(0.76, 0.96)
        # Slightly negative tops and bottoms past the box cut off the head or the feet, as detectors do.
        top = rng.uniform(-0.03, 1.03 - height)
        center_x = 0.5 + float(np.clip(rng.normal(0.0, 0.06), -0.14, 0.14))
    occluded = rng.random() < occlusion_prob
    return SyntheticImage(
        split=split,
        filename=namer(pid, camera),
        pid=pid,
        camera=camera,
        appearance=appearance,
        scene=scene,
        view=_VIEWS[int(rng.choice(4, p=(0.35, 0.35, 0.15, 0.15)))],
        center_x=round(float(center_x), 4),
        top=round(float(top), 4),
        height=round(float(height), 4),
        leg_spread=round(float(rng.uniform(0.0, 1.0)), 4),
        arm_swing=round(float(rng.uniform(-1.0, 1.0)), 4),
        occluder=_OCCLUDERS[int(rng.choice(3, p=(0.4, 0.3, 0.3)))] if occluded else "none",
        occluder_position=round(float(rng.uniform(0.0, 1.0)), 4),
        occluder_extent=round(float(rng.uniform(0.0, 1.0)), 4),
        brightness=round(float(rng.uniform(0.8, 1.2)), 4),
        blur=round(float(rng.uniform(0.0, 0.9)), 4),
        seed=int(rng.integers(2**31)),
    )


def plan_synthetic(
    num_train_ids: int = 100,
    num_test_ids: int = 100,
    seed: int = 0,
    *,
    num_cameras: int = 6,
    train_images_per_id: tuple[int, int] = (4, 16),
    few_images_fraction: float = 0.1,
    cameras_per_id: tuple[int, int] = (2, 4),
    query_cameras: int = 2,
    gallery_images_per_camera: tuple[int, int] = (1, 4),
    distractor_fraction: float = 0.1,
    junk_fraction: float = 0.05,
    swapped_pair_fraction: float = 0.3,
    bag_prob: float = 0.35,
    occlusion_prob: float = 0.2,
) -> list[SyntheticImage]:
    """Decides every image of a synthetic dataset from the seed alone, without drawing any pixel.

    Args:
        num_train_ids: identities in ``bounding_box_train``.
        num_test_ids: identities in ``query``/``bounding_box_test`` (disjoint from the training ones).
        seed: the only source of randomness.
        num_cameras: cameras ``c1..c<num_cameras>``; each has its own backdrop and colour cast.
        train_images_per_id: range (inclusive) of the number of training images of an identity.
        few_images_fraction: fraction of the training identities that get only 2 or 3 images (below a PK
            sampler's usual K = 4, so its sampling with replacement is exercised).
        cameras_per_id: range (inclusive) of the number of cameras an identity is seen by (capped at
            ``num_cameras``); at least 2, so every query has a match from another camera.
        query_cameras: a test identity gets one query image in each of this many of its cameras.
        gallery_images_per_camera: range (inclusive) of gallery images of a test identity in each of its cameras.
        distractor_fraction: distractors (id 0, each a different person seen once) as a fraction of the
            gallery's identity images (at least one when positive).
        junk_fraction: junk images (id -1, badly framed) as a fraction of the gallery's identity images.
        swapped_pair_fraction: fraction of the identities of each split that come as colour-swapped pairs
            (shirt and trousers colours exchanged, all else equal).
        bag_prob: probability that an identity carries a bag (backpack or shoulder bag).
        occlusion_prob: probability that an image has an occluder (car, pole or passer-by).

    Returns:
        The images in a fixed order: train, then query, then gallery (identities, distractors, junk).
        ``sum(img.split == "train" for img in plan)`` is the number of training images.
    """
    if num_train_ids < 1 or num_test_ids < 1:
        raise ValueError(f"num_train_ids and num_test_ids must be >= 1, got {num_train_ids} and {num_test_ids}")
    if num_train_ids + num_test_ids > _MAX_PID:
        raise ValueError(
            f"num_train_ids + num_test_ids must be <= {_MAX_PID} (four-digit Market-1501 ids), "
            f"got {num_train_ids + num_test_ids}"
        )
    if num_cameras < 2:
        raise ValueError(f"num_cameras must be >= 2 (queries need a match from another camera), got {num_cameras}")
    train_lo, train_hi = _check_range("train_images_per_id", train_images_per_id, 1)
    cams_lo, cams_hi = _check_range("cameras_per_id", cameras_per_id, 2)
    if cams_lo > num_cameras:
        raise ValueError(f"cameras_per_id minimum {cams_lo} exceeds num_cameras={num_cameras}")
    cams_hi = min(cams_hi, num_cameras)
    gallery_lo, gallery_hi = _check_range("gallery_images_per_camera", gallery_images_per_camera, 1)
    if query_cameras < 1:
        raise ValueError(f"query_cameras must be >= 1, got {query_cameras}")
    for name, value in (
        ("few_images_fraction", few_images_fraction),
        ("distractor_fraction", distractor_fraction),
        ("junk_fraction", junk_fraction),
        ("swapped_pair_fraction", swapped_pair_fraction),
        ("bag_prob", bag_prob),
        ("occlusion_prob", occlusion_prob),
    ):
        _check_fraction(name, value)

    rng = np.random.default_rng(seed)
    scenes = [_draw_scene(rng) for _ in range(num_cameras)]
    namer = _Namer(rng, num_cameras)
    pids = rng.choice(np.arange(1, _MAX_PID + 1), size=num_train_ids + num_test_ids, replace=False)
    train_pids, test_pids = sorted(pids[:num_train_ids].tolist()), sorted(pids[num_train_ids:].tolist())

    def image(split: str, pid: int, camera: int, appearance: Appearance) -> SyntheticImage:
        return _draw_image(
            rng, split=split, pid=pid, camera=camera, appearance=appearance, scene=scenes[camera - 1],
            namer=namer, occlusion_prob=occlusion_prob,
        )

    def cameras_of_identity() -> list[int]:
        count = int(rng.integers(cams_lo, cams_hi + 1))
        return (rng.choice(num_cameras, size=count, replace=False) + 1).tolist()

    plan: list[SyntheticImage] = []
    few = set(rng.choice(num_train_ids, size=round(few_images_fraction * num_train_ids), replace=False).tolist())
    for index, (pid, appearance) in enumerate(
        zip(train_pids, _draw_identities(rng, num_train_ids, bag_prob, swapped_pair_fraction))
    ):
        if index in few:
            count = int(rng.integers(2, max(2, train_lo - 1) + 1))
        else:
            count = int(rng.integers(train_lo, train_hi + 1))
        cameras = cameras_of_identity()
        # Each of the identity's cameras first, then any of them.
        for k in range(count):
            camera = cameras[k] if k < len(cameras) else cameras[int(rng.integers(len(cameras)))]
            plan.append(image("train", pid, camera, appearance))

    query: list[SyntheticImage] = []
    gallery: list[SyntheticImage] = []
    for pid, appearance in zip(test_pids, _draw_identities(rng, num_test_ids, bag_prob, swapped_pair_fraction)):
        cameras = cameras_of_identity()
        for camera in cameras[: min(query_cameras, len(cameras))]:
            query.append(image("query", pid, camera, appearance))
        # Every camera of the identity has gallery images, so each query has a match from another camera.
        for camera in cameras:
            for _ in range(int(rng.integers(gallery_lo, gallery_hi + 1))):
                gallery.append(image("gallery", pid, camera, appearance))

    num_identity_gallery = len(gallery)
    for pid, fraction in ((_DISTRACTOR_PID, distractor_fraction), (_JUNK_PID, junk_fraction)):
        count = max(1, round(fraction * num_identity_gallery)) if fraction > 0 else 0
        for _ in range(count):
            camera = int(rng.integers(num_cameras)) + 1
            gallery.append(image("gallery", pid, camera, _draw_appearance(rng, bag_prob)))
    return plan + query + gallery


# ----------------------------------------------------------------------------------------------------------------
# Drawing


class _Painter:
    """Draws each shape twice, in colour on the image and as a part label on the mask, so the two align exactly."""

    def __init__(self, image: Image.Image, mask: Image.Image) -> None:
        self.image = ImageDraw.Draw(image)
        self.mask = ImageDraw.Draw(mask)

    def polygon(self, points: Sequence[tuple[float, float]], colour: Colour, label: PartLabel) -> None:
        self.image.polygon(points, fill=colour)
        self.mask.polygon(points, fill=int(label))

    def ellipse(self, box: Sequence[float], colour: Colour, label: PartLabel) -> None:
        box = _ordered(box)
        self.image.ellipse(box, fill=colour)
        self.mask.ellipse(box, fill=int(label))

    def chord(self, box: Sequence[float], start: float, end: float, colour: Colour, label: PartLabel) -> None:
        box = _ordered(box)
        self.image.chord(box, start, end, fill=colour)
        self.mask.chord(box, start, end, fill=int(label))

    def pieslice(self, box: Sequence[float], start: float, end: float, colour: Colour, label: PartLabel) -> None:
        box = _ordered(box)
        self.image.pieslice(box, start, end, fill=colour)
        self.mask.pieslice(box, start, end, fill=int(label))

    def rectangle(self, box: Sequence[float], colour: Colour, label: PartLabel, radius: float = 0.0) -> None:
        box = _ordered(box)
        self.image.rounded_rectangle(box, radius=radius, fill=colour)
        self.mask.rounded_rectangle(box, radius=radius, fill=int(label))

    def line(self, points: Sequence[tuple[float, float]], colour: Colour, label: PartLabel, width: float) -> None:
        width = max(1, round(width))
        self.image.line(points, fill=colour, width=width, joint="curve")
        self.mask.line(points, fill=int(label), width=width, joint="curve")


def _ordered(box: Sequence[float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _shade(colour: Colour, factor: float) -> Colour:
    r, g, b = (int(min(255, c * factor)) for c in colour)
    return r, g, b


class _Body:
    """Body geometry of one image in pixels: ``x(dx)`` and ``y(f)`` map offsets and heights given as fractions
    of the person's height to image coordinates."""

    def __init__(self, image: SyntheticImage, height: int, width: int) -> None:
        self.ph = image.height * height
        self.cx = image.center_x * width
        self.y0 = image.top * height
        self.view = image.view
        self.profile = image.view in ("left", "right")
        self.facing = {"left": -1, "right": 1}.get(image.view, 0)
        self.build = image.appearance.build
        # Shoulder and waist half-widths; a profile is narrower than a front or back view.
        self.shoulder = 0.075 if self.profile else 0.125 * self.build
        self.waist = 0.07 if self.profile else 0.1 * self.build

    def x(self, dx: float) -> float:
        return self.cx + dx * self.ph

    def y(self, f: float) -> float:
        return self.y0 + f * self.ph

    def torso_half_width(self, f: float) -> float:
        t = min(1.0, max(0.0, (f - 0.175) / (0.52 - 0.175)))
        return self.shoulder + (self.waist - self.shoulder) * t


def _draw_legs(p: _Painter, a: Appearance, b: _Body, spread: float) -> None:
    hip, knee, ankle = 0.49, 0.69, 0.94
    if b.profile:
        legs = [(0.0, s * (0.01 + 0.09 * spread), 0.05 * b.build, 0.03) for s in (-1, 1)]
        crotch = 0.05
    else:
        legs = [(s * 0.048 * b.build, s * (0.03 + 0.05 * spread), 0.05 * b.build, 0.03) for s in (-1, 1)]
        crotch = 0.09 * b.build

    def quad(
        hip_dx: float, foot_dx: float, top_hw: float, bottom_hw: float, f0: float, f1: float
    ) -> list[tuple[float, float]]:
        """The leg between heights f0 and f1 (fractions of the person's height) as a quadrilateral."""

        def at(f: float) -> tuple[float, float]:
            t = (f - hip) / (ankle - hip)
            return hip_dx + (foot_dx - hip_dx) * t, top_hw + (bottom_hw - top_hw) * t

        (c0, w0), (c1, w1) = at(f0), at(f1)
        return [(b.x(c0 - w0), b.y(f0)), (b.x(c0 + w0), b.y(f0)), (b.x(c1 + w1), b.y(f1)), (b.x(c1 - w1), b.y(f1))]

    bare = a.lower in ("shorts", "skirt")
    for leg in legs:
        p.polygon(quad(*leg, hip, ankle), a.skin if bare else a.trousers, PartLabel.LEGS)
    if a.lower == "shorts":
        for leg in legs:
            p.polygon(quad(*leg, hip, knee - 0.04), a.trousers, PartLabel.LEGS)
    if a.lower == "skirt":
        top_hw, bottom_hw = (0.06, 0.1) if b.profile else (0.09 * b.build, 0.14 * b.build)
        p.polygon(
            [
                (b.x(-top_hw), b.y(0.47)), (b.x(top_hw), b.y(0.47)),
                (b.x(bottom_hw), b.y(knee)), (b.x(-bottom_hw), b.y(knee)),
            ],
            a.trousers,
            PartLabel.LEGS,
        )
    else:
        p.rectangle((b.x(-crotch), b.y(0.47), b.x(crotch), b.y(0.56)), a.trousers, PartLabel.LEGS)
    for _, foot_dx, _, _ in legs:
        # In profile the shoe points where the person faces.
        back, front = (0.03, 0.06) if b.profile else (0.04, 0.04)
        if b.facing < 0:
            back, front = front, back
        p.ellipse((b.x(foot_dx - back), b.y(0.925), b.x(foot_dx + front), b.y(0.99)), a.shoes, PartLabel.SHOES)


def _draw_torso(p: _Painter, a: Appearance, b: _Body) -> None:
    neck_hw, top, shoulders, waist = 0.045, 0.145, 0.175, 0.52
    p.polygon(
        [
            (b.x(-neck_hw), b.y(top)), (b.x(neck_hw), b.y(top)), (b.x(b.shoulder), b.y(shoulders)),
            (b.x(b.waist), b.y(waist)), (b.x(-b.waist), b.y(waist)), (b.x(-b.shoulder), b.y(shoulders)),
        ],
        a.shirt,
        PartLabel.UPPER_BODY,
    )
    if a.shirt_pattern == "stripes":
        period = 0.06
        f = 0.2
        while f + period / 2 <= waist:
            f1 = f + period / 2
            w0, w1 = b.torso_half_width(f), b.torso_half_width(f1)
            p.polygon(
                [(b.x(-w0), b.y(f)), (b.x(w0), b.y(f)), (b.x(w1), b.y(f1)), (b.x(-w1), b.y(f1))],
                a.second,
                PartLabel.UPPER_BODY,
            )
            f += period
    elif a.shirt_pattern == "jacket" and b.view == "front":
        # An open jacket: the shirt under it shows as a band down the middle, only from the front.
        p.polygon(
            [(b.x(-0.03), b.y(top)), (b.x(0.03), b.y(top)), (b.x(0.04), b.y(waist)), (b.x(-0.04), b.y(waist))],
            a.second,
            PartLabel.UPPER_BODY,
        )


def _draw_arm(p: _Painter, a: Appearance, b: _Body, points: list[tuple[float, float]]) -> None:
    width = 0.055 * b.ph * b.build
    if a.long_sleeves:
        p.line(points, a.shirt, PartLabel.UPPER_BODY, width)
    else:
        p.line(points[1:], a.skin, PartLabel.UPPER_BODY, 0.8 * width)
        p.line(points[:2], a.shirt, PartLabel.UPPER_BODY, width)
    hx, hy = points[-1]
    r = 0.024 * b.ph
    p.ellipse((hx - r, hy - r, hx + r, hy + r), a.skin, PartLabel.UPPER_BODY)


def _profile_arm(b: _Body, swing: float) -> list[tuple[float, float]]:
    return [(b.x(0.0), b.y(0.2)), (b.x(0.05 * swing), b.y(0.34)), (b.x(0.12 * swing), b.y(0.47))]


def _draw_front_arms(p: _Painter, a: Appearance, b: _Body, swing: float) -> None:
    for side, share in ((-1, 1.0), (1, 0.6)):
        out = abs(swing) * share
        points = [
            (b.x(side * (b.shoulder - 0.02)), b.y(0.19)),
            (b.x(side * (b.shoulder + 0.015 + 0.015 * out)), b.y(0.34)),
            (b.x(side * (b.shoulder + 0.01 + 0.035 * out)), b.y(0.48 - 0.03 * out)),
        ]
        _draw_arm(p, a, b, points)


def _draw_head(p: _Painter, a: Appearance, b: _Body) -> None:
    p.rectangle((b.x(-0.02), b.y(0.11), b.x(0.02), b.y(0.16)), a.skin, PartLabel.HEAD)
    shift = 0.01 * b.facing
    head = (b.x(shift - 0.045), b.y(0.007), b.x(shift + 0.045), b.y(0.143))
    hair_box = (b.x(shift - 0.05), b.y(0.0), b.x(shift + 0.05), b.y(0.15))
    if b.view == "back":
        p.ellipse(head, a.hair, PartLabel.HEAD)
    else:
        p.ellipse(head, a.skin, PartLabel.HEAD)
        if b.profile:
            # Back of the head: the lower quadrant opposite to the face (PIL angles run clockwise from 3 o'clock).
            start = 90 if b.facing > 0 else 0
            p.pieslice(hair_box, start, start + 90, a.hair, PartLabel.HEAD)
    if a.hair_style == "long" and b.view == "back":
        p.rectangle((b.x(-0.055), b.y(0.07), b.x(0.055), b.y(0.24)), a.hair, PartLabel.HEAD, radius=0.02 * b.ph)
    if a.hair_style == "cap":
        p.chord(hair_box, 180, 360, a.hat, PartLabel.HEAD)
        if b.profile:
            brim = (b.x(shift), b.y(0.065), b.x(shift + b.facing * 0.08), b.y(0.08))
        else:
            brim = (b.x(-0.055), b.y(0.065), b.x(0.055), b.y(0.08))
        p.rectangle(brim, a.hat, PartLabel.HEAD)
    elif b.view != "back":
        p.chord((hair_box[0], hair_box[1], hair_box[2], b.y(0.12)), 180, 360, a.hair, PartLabel.HEAD)


def _draw_long_hair_behind(p: _Painter, a: Appearance, b: _Body) -> None:
    if b.profile:
        box = (b.x(-b.facing * 0.055), b.y(0.05), b.x(b.facing * 0.005), b.y(0.22))
    else:
        box = (b.x(-0.058), b.y(0.04), b.x(0.058), b.y(0.22))
    p.rectangle(box, a.hair, PartLabel.HEAD, radius=0.02 * b.ph)


def _draw_backpack(p: _Painter, a: Appearance, b: _Body) -> None:
    dark = _shade(a.bag_colour, 0.75)
    if b.view == "back":
        hw = 0.085 * b.build
        p.rectangle((b.x(-hw), b.y(0.19), b.x(hw), b.y(0.45)), a.bag_colour, PartLabel.BAG, radius=0.02 * b.ph)
        p.rectangle((b.x(-0.6 * hw), b.y(0.33), b.x(0.6 * hw), b.y(0.43)), dark, PartLabel.BAG)
    elif b.view == "front":
        for side in (-1, 1):
            p.line(
                [(b.x(side * 0.07 * b.build), b.y(0.15)), (b.x(side * 0.075 * b.build), b.y(0.36))],
                dark,
                PartLabel.BAG,
                0.022 * b.ph,
            )
    else:
        # In profile the pack sticks out behind the back; drawn before the torso, which covers its front edge.
        back = -b.facing
        p.rectangle(
            (b.x(back * 0.04), b.y(0.19), b.x(back * (b.shoulder + 0.085)), b.y(0.45)),
            a.bag_colour,
            PartLabel.BAG,
            radius=0.02 * b.ph,
        )


def _draw_shoulder_bag(p: _Painter, a: Appearance, b: _Body) -> None:
    if b.profile:
        strap = [(b.x(0.0), b.y(0.17)), (b.x(0.0), b.y(0.41))]
        p.line(strap, _shade(a.bag_colour, 0.75), PartLabel.BAG, 0.018 * b.ph)
        p.rectangle((b.x(-0.05), b.y(0.4), b.x(0.05), b.y(0.55)), a.bag_colour, PartLabel.BAG, radius=0.01 * b.ph)
        return
    # The bag hangs on the same hip of the person; seen from behind that hip is on the other side of the image.
    side = a.bag_side if b.view == "front" else -a.bag_side
    p.line(
        [(b.x(-side * 0.07), b.y(0.16)), (b.x(side * (b.waist + 0.04)), b.y(0.41))],
        _shade(a.bag_colour, 0.75),
        PartLabel.BAG,
        0.018 * b.ph,
    )
    p.rectangle(
        (b.x(side * (b.waist + 0.005)), b.y(0.4), b.x(side * (b.waist + 0.085)), b.y(0.55)),
        a.bag_colour,
        PartLabel.BAG,
        radius=0.01 * b.ph,
    )


def _draw_person(p: _Painter, image: SyntheticImage, b: _Body) -> None:
    a = image.appearance
    if a.hair_style == "long" and b.view != "back":
        _draw_long_hair_behind(p, a, b)
    if a.bag == "backpack" and b.profile:
        _draw_backpack(p, a, b)
    if b.profile:
        # The far arm swings opposite to the near one and mostly hides behind the torso.
        _draw_arm(p, a, b, _profile_arm(b, -image.arm_swing))
    _draw_legs(p, a, b, image.leg_spread)
    _draw_torso(p, a, b)
    if a.bag == "backpack" and not b.profile:
        _draw_backpack(p, a, b)
    if b.profile:
        _draw_arm(p, a, b, _profile_arm(b, image.arm_swing))
    else:
        _draw_front_arms(p, a, b, image.arm_swing)
    _draw_head(p, a, b)
    if a.bag == "shoulder":
        _draw_shoulder_bag(p, a, b)


def _draw_occluder(
    p: _Painter, rng: np.random.Generator, image: SyntheticImage, b: _Body, height: int, width: int
) -> None:
    """Occluders are drawn with the background label: masks show what is visible."""
    bg = PartLabel.BACKGROUND
    pos, extent = image.occluder_position, image.occluder_extent
    if image.occluder == "car":
        top = height * (1.0 - (0.2 + 0.25 * extent))
        colour = _pick(rng, _CARS)
        left = -0.3 * width + 0.3 * width * pos
        p.rectangle((left, top, left + 1.6 * width, height + 10), colour, bg, radius=0.08 * height)
        windows = (left + 0.1 * width, top + 0.12 * (height - top), left + 1.5 * width, top + 0.45 * (height - top))
        p.rectangle(windows, _shade(colour, 0.45), bg)
        r = 0.09 * height
        for wx in (left + 0.25 * width, left + 1.35 * width):
            p.ellipse((wx - r, height - r, wx + r, height + r), (20, 20, 22), bg)
    elif image.occluder == "pole":
        cx = b.cx + (pos - 0.5) * 0.6 * width
        half = (0.035 + 0.045 * extent) * width
        colour = _pick(rng, ((110, 112, 115), (40, 70, 50), (150, 150, 150), (70, 60, 50)))
        p.rectangle((cx - half, -1, cx + half, height + 1), colour, bg)
        p.line([(cx - 0.4 * half, -1), (cx - 0.4 * half, height + 1)], _shade(colour, 1.3), bg, 0.3 * half)
    else:
        # Someone walking past the camera, close enough to cover one side of the person.
        side = -1 if pos < 0.5 else 1
        depth = (0.2 + 0.25 * extent) * width
        inner = depth if side < 0 else width - depth
        outer = -0.3 * width if side < 0 else 1.3 * width
        top = b.y(0.2 + 0.3 * rng.random())
        colour = _pick(rng, _GARMENT)
        p.rectangle((outer, top, inner, height + 10), colour, bg, radius=0.1 * width)


def _backdrop(rng: np.random.Generator, scene: CameraScene, height: int, width: int) -> np.ndarray:
    rows = (np.arange(height, dtype=np.float32) / height)[:, None, None]
    horizon = scene.horizon + rng.normal(0.0, 0.03)
    wall = np.asarray(scene.wall, np.float32) * (0.8 + 0.3 * rows)
    ground = np.asarray(scene.ground, np.float32) * (0.9 + 0.2 * rows)
    base = np.where(rows < horizon, wall, ground)
    # Smooth texture, mostly brightness with a little hue: coarse noise upsampled bilinearly (cheaper than
    # filtering full-size noise).
    shape = (max(2, height // 8), max(2, width // 8))
    coarse = rng.normal(0.0, 12.0, (*shape, 1)) + rng.normal(0.0, 4.0, (*shape, 3))
    coarse = np.clip(128 + coarse, 0, 255)
    texture = Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR)
    pixels = base + (np.asarray(texture, np.float32) - 128.0)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _draw_clutter(
    rng: np.random.Generator, draw: ImageDraw.ImageDraw, scene: CameraScene, height: int, width: int
) -> None:
    for _ in range(int(rng.integers(3, 9))):
        w, h = rng.uniform(0.1, 0.6) * width, rng.uniform(0.05, 0.4) * height
        x, y = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        if rng.random() < 0.35:
            # Clothes colours in the background, so that a colour alone does not mean "person".
            colour = _pick(rng, _GARMENT)
        else:
            base = scene.wall if y < scene.horizon * height else scene.ground
            colour = tuple(int(np.clip(c + rng.uniform(-50, 50), 0, 255)) for c in base)
        if rng.random() < 0.2:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        else:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
    for _ in range(int(rng.integers(0, 3))):
        x = rng.uniform(0, width)
        draw.line([(x, 0), (x, height)], fill=_shade(scene.wall, 0.6), width=1)


def _check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or not all(isinstance(v, (int, np.integer)) for v in image_size):
        raise ValueError(f"image_size must be a pair of integers (height, width), got {image_size!r}")
    height, width = int(image_size[0]), int(image_size[1])
    if height < 32 or width < 16:
        raise ValueError(f"image_size must be at least (32, 16) (height, width), got {image_size!r}")
    return height, width


def render_synthetic(image: SyntheticImage, image_size: tuple[int, int] = (128, 64)) -> tuple[np.ndarray, np.ndarray]:
    """Draws one planned image and its part mask.

    Args:
        image: an entry of :func:`plan_synthetic`.
        image_size: ``(height, width)`` in pixels.

    Returns:
        ``(rgb, mask)``: the image, uint8 of shape ``(H, W, 3)`` (before JPEG compression), and the part labels,
        uint8 of shape ``(H, W)`` with the values of :class:`PartLabel`.
    """
    height, width = _check_image_size(image_size)
    rng = np.random.default_rng(image.seed)
    scene = image.scene
    canvas = Image.fromarray(_backdrop(rng, scene, height, width))
    _draw_clutter(rng, ImageDraw.Draw(canvas), scene, height, width)
    mask = Image.new("L", (width, height), 0)
    painter = _Painter(canvas, mask)
    body = _Body(image, height, width)
    # A soft contact shadow grounds the person; it is not part of the person.
    painter.image.ellipse(
        _ordered((body.x(-0.16), body.y(0.975), body.x(0.16), body.y(1.005))), fill=_shade(scene.ground, 0.6)
    )
    _draw_person(painter, image, body)
    if image.occluder != "none":
        _draw_occluder(painter, rng, image, body, height, width)

    labels = np.array(mask)
    pixels = np.asarray(canvas, dtype=np.float32)
    # Round bodies: clothes darken toward the silhouette's sides.
    columns = np.arange(width, dtype=np.float32)
    falloff = 1.0 - 0.25 * np.minimum(1.0, ((columns - body.cx) / (0.16 * body.ph)) ** 2)
    pixels = pixels * np.where(labels > 0, falloff[None, :], 1.0)[..., None]
    pixels = pixels * (np.asarray(scene.gain, np.float32) * image.brightness)
    pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * scene.noise
    out = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
    radius = image.blur * height / 128
    if radius >= 0.25:
        out = out.filter(ImageFilter.GaussianBlur(radius))
    return np.array(out), labels


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _metadata(arguments: dict[str, Any], plan: list[SyntheticImage]) -> dict[str, Any]:
    counts = {folder: sum(img.folder == folder for img in plan) for folder in SPLIT_FOLDERS.values()}
    metadata = {"generator": "icg.data.synthetic", "format_version": _FORMAT_VERSION, "arguments": arguments,
                "counts": counts}
    # A JSON round trip turns tuples into lists (and numpy scalars into numbers), so stored and fresh metadata
    # compare equal.
    return json.loads(json.dumps(metadata, default=_json_number))


def _json_number(value: object) -> int | float:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"generate_synthetic: argument value {value!r} of type {type(value).__name__} is not a number")


def _is_complete(root: Path, expected: dict[str, Any]) -> bool:
    """True if ``root`` holds this very generation; False if ``root`` is absent or an empty folder; raises if it
    holds anything else."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise FileExistsError(f"generate_synthetic: root {root} exists and is not a folder")
    metadata_file = root / METADATA_FILE
    if not metadata_file.is_file():
        if not any(root.iterdir()):
            return False
        raise FileExistsError(
            f"generate_synthetic: root {root} is not empty and holds no {METADATA_FILE}, so it is not a complete "
            "synthetic generation (a foreign folder, or one written by something else); it is left untouched. "
            "Pass another root, or delete this folder yourself if it is disposable."
        )
    try:
        stored = json.loads(metadata_file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise FileExistsError(f"generate_synthetic: {metadata_file} cannot be read ({error})") from None
    if stored.get("generator") != expected["generator"] or stored.get("format_version") != expected["format_version"]:
        raise FileExistsError(
            f"generate_synthetic: {root} holds a generation of another generator or format version "
            f"({stored.get('generator')!r}, version {stored.get('format_version')!r}; this is version "
            f"{_FORMAT_VERSION}); pass another root or delete the folder yourself"
        )
    old, new = stored.get("arguments", {}), expected["arguments"]
    differences = [f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in new if old.get(k) != new[k]]
    if differences:
        raise FileExistsError(
            f"generate_synthetic: {root} holds a synthetic generation with other arguments ("
            + "; ".join(differences)
            + "); pass another root or delete the folder yourself"
        )
    for folder, count in expected["counts"].items():
        # Globbing a missing folder finds nothing, which counts as a mismatch.
        found = len(list((root / folder).glob("*.jpg")))
        masks = len(list((root / MASK_FOLDER / folder).glob("*.png")))
        if found != count or masks != count:
            raise FileExistsError(
                f"generate_synthetic: {root / folder} holds {found} images and {masks} part masks where the "
                f"generation wrote {count}; the folder was modified after generation. Delete it yourself to "
                "generate it again"
            )
    return True


def generate_synthetic(
    root: str | Path,
    num_train_ids: int = 100,
    num_test_ids: int = 100,
    seed: int = 0,
    *,
    image_size: tuple[int, int] = (128, 64),
    jpeg_quality: int = 90,
    num_cameras: int = 6,
    train_images_per_id: tuple[int, int] = (4, 16),
    few_images_fraction: float = 0.1,
    cameras_per_id: tuple[int, int] = (2, 4),
    query_cameras: int = 2,
    gallery_images_per_camera: tuple[int, int] = (1, 4),
    distractor_fraction: float = 0.1,
    junk_fraction: float = 0.05,
    swapped_pair_fraction: float = 0.3,
    bag_prob: float = 0.35,
    occlusion_prob: float = 0.2,
) -> Path:
    """Draws a synthetic dataset in the Market-1501 layout under ``root``, or reuses the one already there.

    Args:
        root: the dataset folder to create (``root/bounding_box_train`` etc.); its parent is created if needed.
            If it exists it must be empty or hold a complete generation with the same arguments.
        num_train_ids, num_test_ids, seed: see :func:`plan_synthetic`.
        image_size: ``(height, width)`` of the images and masks.
        jpeg_quality: JPEG quality of the images (1..95).
        num_cameras, train_images_per_id, few_images_fraction, cameras_per_id, query_cameras,
        gallery_images_per_camera, distractor_fraction, junk_fraction, swapped_pair_fraction, bag_prob,
        occlusion_prob: see :func:`plan_synthetic`.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``root`` holds something other than this generation (other arguments, a foreign or
            modified folder). Nothing is deleted.
    """
    root = Path(root).expanduser()
    _check_image_size(image_size)
    if not 1 <= jpeg_quality <= 95:
        raise ValueError(f"jpeg_quality must be in 1..95, got {jpeg_quality}")
    plan_arguments = dict(
        num_cameras=num_cameras,
        train_images_per_id=tuple(train_images_per_id),
        few_images_fraction=few_images_fraction,
        cameras_per_id=tuple(cameras_per_id),
        query_cameras=query_cameras,
        gallery_images_per_camera=tuple(gallery_images_per_camera),
        distractor_fraction=distractor_fraction,
        junk_fraction=junk_fraction,
        swapped_pair_fraction=swapped_pair_fraction,
        bag_prob=bag_prob,
        occlusion_prob=occlusion_prob,
    )
    plan = plan_synthetic(num_train_ids, num_test_ids, seed, **plan_arguments)
    arguments = dict(
        num_train_ids=num_train_ids, num_test_ids=num_test_ids, seed=seed, image_size=tuple(image_size),
        jpeg_quality=jpeg_quality, **plan_arguments,
    )
    metadata = _metadata(arguments, plan)
    if root.parent.is_dir():  # staging folders of killed generations
        remove_orphans(root.parent, root.name)
    if _is_complete(root, metadata):
        return root

    staging = staging_folder(root)
    try:
        for folder in SPLIT_FOLDERS.values():
            (staging / folder).mkdir()
            (staging / MASK_FOLDER / folder).mkdir(parents=True)
        for image in plan:
            pixels, labels = render_synthetic(image, image_size)
            Image.fromarray(pixels).save(staging / image.relpath, format="JPEG", quality=jpeg_quality)
            Image.fromarray(labels).save(staging / image.mask_relpath, format="PNG")
        # Written last: its presence marks a complete generation.
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        _publish(staging, root, metadata)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return root


def _publish(staging: Path, root: Path, metadata: dict[str, Any]) -> None:
    """Renames the finished staging folder to ``root`` in one step, tolerating a concurrent identical run."""
    try:
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        os.rename(staging, root)
    except OSError as error:
        # Another process (e.g. another DDP rank) may have published the same generation first.
        if _is_complete(root, metadata):
            return
        raise FileExistsError(f"generate_synthetic: cannot move the generated folder to {root} ({error})") from error
