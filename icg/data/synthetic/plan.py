"""The plan of a synthetic dataset: every image's file, identity, camera, appearance and nuisances, decided from
the seed alone without drawing a pixel, so that a DataModule can count the training images and ids up front.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from icg.data.synthetic.palette import BAGS, GARMENT, HAIR, SHOES, SKIN, TROUSER_WEIGHTS, Color, pick
from icg.data.synthetic.spec import MAX_PID, SyntheticSpec

__all__ = [
    "MASK_FOLDER",
    "SPLIT_FOLDERS",
    "Appearance",
    "CameraScene",
    "SyntheticImage",
    "plan_images",
    "plan_synthetic",
]

SPLIT_FOLDERS: Final[dict[str, str]] = {
    "train": "bounding_box_train",
    "query": "query",
    "gallery": "bounding_box_test",
}
"""Split name -> Market-1501 folder name."""

MASK_FOLDER: Final[str] = "part_masks"
"""The folder of the part masks, beside the split folders."""

_JUNK_PID: Final[int] = -1
_DISTRACTOR_PID: Final[int] = 0
_VIEWS: Final[tuple[str, ...]] = ("front", "back", "left", "right")
_OCCLUDERS: Final[tuple[str, ...]] = ("car", "pole", "passerby")


@dataclass(frozen=True, kw_only=True)
class Appearance:
    """What one identity wears; fixed across all of its images.

    ``build`` scales the body's width (0.85 slim .. 1.15 broad); ``bag_side`` is the hip (-1 left, +1 right,
    as seen from the front) on which a shoulder bag hangs.
    """

    skin: Color
    hair: Color
    hair_style: str  # "short" | "long" | "cap"
    hat: Color
    shirt: Color
    shirt_pattern: str  # "plain" | "stripes" | "jacket" (shirt is the jacket, second the shirt under it)
    second: Color  # stripe colour or the shirt under the jacket
    long_sleeves: bool
    trousers: Color
    lower: str  # "trousers" | "shorts" | "skirt"
    shoes: Color
    bag: str  # "none" | "backpack" | "shoulder"
    bag_color: Color
    bag_side: int
    build: float


@dataclass(frozen=True, kw_only=True)
class CameraScene:
    """What one camera looks at and how it renders colour.

    ``horizon`` is the row (fraction of the image height) where wall meets ground; ``gain`` the per-channel colour
    cast (R, G, B multipliers); ``noise`` the sensor noise standard deviation in grey levels.
    """

    wall: Color
    ground: Color
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


def _sample_appearance(rng: np.random.Generator, bag_prob: float) -> Appearance:
    shirt = pick(rng, GARMENT)
    second = pick(rng, [c for c in GARMENT if c != shirt])
    has_bag = rng.random() < bag_prob
    return Appearance(
        skin=pick(rng, SKIN),
        hair=pick(rng, HAIR),
        hair_style=("short", "long", "cap")[int(rng.choice(3, p=(0.55, 0.3, 0.15)))],
        hat=pick(rng, GARMENT),
        shirt=shirt,
        shirt_pattern=("plain", "stripes", "jacket")[int(rng.choice(3, p=(0.55, 0.2, 0.25)))],
        second=second,
        long_sleeves=bool(rng.random() < 0.6),
        trousers=pick(rng, GARMENT, TROUSER_WEIGHTS),
        lower=("trousers", "shorts", "skirt")[int(rng.choice(3, p=(0.7, 0.18, 0.12)))],
        shoes=pick(rng, SHOES),
        bag=("backpack", "shoulder")[int(rng.integers(2))] if has_bag else "none",
        bag_color=pick(rng, BAGS),
        bag_side=int(rng.choice((-1, 1))),
        build=round(float(rng.uniform(0.85, 1.15)), 4),
    )


def _sample_identities(
    rng: np.random.Generator, count: int, bag_prob: float, swapped_fraction: float
) -> list[Appearance]:
    appearances = [_sample_appearance(rng, bag_prob) for _ in range(count)]
    order = rng.permutation(count)
    for k in range(round(swapped_fraction * count / 2)):
        source, partner = int(order[2 * k]), int(order[2 * k + 1])
        a = appearances[source]
        appearances[partner] = replace(a, shirt=a.trousers, trousers=a.shirt)
    return appearances


def _sample_scene(rng: np.random.Generator) -> CameraScene:
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


def _sample_image(
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


def plan_images(spec: SyntheticSpec) -> list[SyntheticImage]:
    """Decides every image of the synthetic dataset ``spec`` describes, from its seed alone.

    Returns:
        The images in a fixed order: train, then query, then gallery (identities, distractors, junk).
        ``sum(img.split == "train" for img in plan)`` is the number of training images.
    """
    train_lo, train_hi = spec.train_images_per_id
    cams_lo, cams_hi = spec.cameras_per_id[0], min(spec.cameras_per_id[1], spec.num_cameras)
    gallery_lo, gallery_hi = spec.gallery_images_per_camera
    num_cameras, num_train_ids, bag_prob = spec.num_cameras, spec.num_train_ids, spec.bag_prob

    rng = np.random.default_rng(spec.seed)
    scenes = [_sample_scene(rng) for _ in range(num_cameras)]
    namer = _Namer(rng, num_cameras)
    pids = rng.choice(np.arange(1, MAX_PID + 1), size=num_train_ids + spec.num_test_ids, replace=False)
    train_pids, test_pids = sorted(pids[:num_train_ids].tolist()), sorted(pids[num_train_ids:].tolist())

    def image(split: str, pid: int, camera: int, appearance: Appearance) -> SyntheticImage:
        return _sample_image(
            rng,
            split=split,
            pid=pid,
            camera=camera,
            appearance=appearance,
            scene=scenes[camera - 1],
            namer=namer,
            occlusion_prob=spec.occlusion_prob,
        )

    def cameras_of_identity() -> list[int]:
        count = int(rng.integers(cams_lo, cams_hi + 1))
        return (rng.choice(num_cameras, size=count, replace=False) + 1).tolist()

    plan: list[SyntheticImage] = []
    few = set(rng.choice(num_train_ids, size=round(spec.few_images_fraction * num_train_ids), replace=False).tolist())
    for index, (pid, appearance) in enumerate(
        zip(train_pids, _sample_identities(rng, num_train_ids, bag_prob, spec.swapped_pair_fraction))
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
    test_appearances = _sample_identities(rng, spec.num_test_ids, bag_prob, spec.swapped_pair_fraction)
    for pid, appearance in zip(test_pids, test_appearances):
        cameras = cameras_of_identity()
        for camera in cameras[: min(spec.query_cameras, len(cameras))]:
            query.append(image("query", pid, camera, appearance))
        # Every camera of the identity has gallery images, so each query has a match from another camera.
        for camera in cameras:
            for _ in range(int(rng.integers(gallery_lo, gallery_hi + 1))):
                gallery.append(image("gallery", pid, camera, appearance))

    num_identity_gallery = len(gallery)
    for pid, fraction in ((_DISTRACTOR_PID, spec.distractor_fraction), (_JUNK_PID, spec.junk_fraction)):
        count = max(1, round(fraction * num_identity_gallery)) if fraction > 0 else 0
        for _ in range(count):
            camera = int(rng.integers(num_cameras)) + 1
            gallery.append(image("gallery", pid, camera, _sample_appearance(rng, bag_prob)))
    return plan + query + gallery


def plan_synthetic(
    num_train_ids: int = 100, num_test_ids: int = 100, seed: int = 0, **options: Any
) -> list[SyntheticImage]:
    """:func:`plan_images` of ``SyntheticSpec(num_train_ids=..., num_test_ids=..., seed=..., **options)``; the
    options and their checks are :class:`~icg.data.synthetic.spec.SyntheticSpec`'s (``image_size`` and
    ``jpeg_quality`` are accepted and do not change the plan)."""
    return plan_images(SyntheticSpec(num_train_ids=num_train_ids, num_test_ids=num_test_ids, seed=seed, **options))
