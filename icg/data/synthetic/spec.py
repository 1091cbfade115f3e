"""What a synthetic generation holds: every argument of the plan and of the files, in one checked, frozen record.

The plan (:mod:`~icg.data.synthetic.plan`) reads the population and nuisance fields, the writer
(:mod:`~icg.data.synthetic.write`) the image size and JPEG quality, and ``synthetic.json`` stores all of them in
field order, so that a folder can be matched against the arguments that would regenerate it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

__all__ = ["MAX_PID", "SyntheticSpec", "check_image_size"]

MAX_PID: Final[int] = 9999  # Market-1501 names carry four digits


@dataclass(frozen=True, kw_only=True)
class SyntheticSpec:
    """The arguments of one synthetic generation, checked on construction.

    The field order is the order of ``arguments`` in ``synthetic.json``; changing it changes the files.

    Attributes:
        num_train_ids: identities in ``bounding_box_train``.
        num_test_ids: identities in ``query``/``bounding_box_test`` (disjoint from the training ones).
        seed: the only source of randomness.
        image_size: ``(height, width)`` of the images and masks (the plan itself is size-free).
        jpeg_quality: JPEG quality of the images (1..95).
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

    The pairs (``image_size`` and the ranges) are stored as tuples of ints, so a spec is hashable and a list
    argument describes the same generation as a tuple.
    """

    num_train_ids: int = 100
    num_test_ids: int = 100
    seed: int = 0
    image_size: tuple[int, int] = (128, 64)
    jpeg_quality: int = 90
    num_cameras: int = 6
    train_images_per_id: tuple[int, int] = (4, 16)
    few_images_fraction: float = 0.1
    cameras_per_id: tuple[int, int] = (2, 4)
    query_cameras: int = 2
    gallery_images_per_camera: tuple[int, int] = (1, 4)
    distractor_fraction: float = 0.1
    junk_fraction: float = 0.05
    swapped_pair_fraction: float = 0.3
    bag_prob: float = 0.35
    occlusion_prob: float = 0.2

    def __post_init__(self) -> None:
        if self.num_train_ids < 1 or self.num_test_ids < 1:
            raise ValueError(
                f"num_train_ids and num_test_ids must be >= 1, got {self.num_train_ids} and {self.num_test_ids}"
            )
        if self.num_train_ids + self.num_test_ids > MAX_PID:
            raise ValueError(
                f"num_train_ids + num_test_ids must be <= {MAX_PID} (four-digit Market-1501 ids), "
                f"got {self.num_train_ids + self.num_test_ids}"
            )
        if self.num_cameras < 2:
            raise ValueError(
                f"num_cameras must be >= 2 (queries need a match from another camera), got {self.num_cameras}"
            )
        self._set_pair("train_images_per_id", _check_range("train_images_per_id", self.train_images_per_id, 1))
        self._set_pair("cameras_per_id", _check_range("cameras_per_id", self.cameras_per_id, 2))
        if self.cameras_per_id[0] > self.num_cameras:
            raise ValueError(f"cameras_per_id minimum {self.cameras_per_id[0]} exceeds num_cameras={self.num_cameras}")
        self._set_pair(
            "gallery_images_per_camera", _check_range("gallery_images_per_camera", self.gallery_images_per_camera, 1)
        )
        if self.query_cameras < 1:
            raise ValueError(f"query_cameras must be >= 1, got {self.query_cameras}")
        for name in (
            "few_images_fraction",
            "distractor_fraction",
            "junk_fraction",
            "swapped_pair_fraction",
            "bag_prob",
            "occlusion_prob",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        self._set_pair("image_size", check_image_size(self.image_size))
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in 1..95, got {self.jpeg_quality}")

    def _set_pair(self, name: str, value: tuple[int, int]) -> None:
        object.__setattr__(self, name, value)  # the dataclass is frozen; this is its own construction


def _check_range(name: str, value: Sequence[int], low: int) -> tuple[int, int]:
    if len(value) != 2 or not all(isinstance(v, (int, np.integer)) for v in value):
        raise ValueError(f"{name} must be a pair of integers (min, max), got {value!r}")
    lo, hi = int(value[0]), int(value[1])
    if not low <= lo <= hi:
        raise ValueError(f"{name} must satisfy {low} <= min <= max, got {value!r}")
    return lo, hi


def check_image_size(image_size: Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` as ints; raises ``ValueError`` unless it is a pair of at least ``(32, 16)``."""
    if len(image_size) != 2 or not all(isinstance(v, (int, np.integer)) for v in image_size):
        raise ValueError(f"image_size must be a pair of integers (height, width), got {image_size!r}")
    height, width = int(image_size[0]), int(image_size[1])
    if height < 32 or width < 16:
        raise ValueError(f"image_size must be at least (32, 16) (height, width), got {image_size!r}")
    return height, width
