"""The colours of the synthetic world: small palettes shared by the plan (what identities wear) and the drawing
(occluders and clutter), and the one way to pick from them.

Palettes are small on purpose: colours must recur across identities, so that colour alone does not identify a
person.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

__all__ = ["BAGS", "CARS", "GARMENT", "HAIR", "SHOES", "SKIN", "TROUSER_WEIGHTS", "Color", "pick"]

Color = tuple[int, int, int]
"""An RGB colour, 0..255 per channel."""

GARMENT: Final[tuple[Color, ...]] = (
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
# Trousers are mostly dark or neutral; weights follow the order of GARMENT.
TROUSER_WEIGHTS: Final[tuple[float, ...]] = (1, 4, 2.5, 3, 4, 0.5, 0.7, 0.3, 0.3, 0.3, 1.5, 2, 0.3)
SKIN: Final[tuple[Color, ...]] = ((250, 220, 195), (232, 190, 158), (198, 150, 112), (150, 102, 72), (96, 66, 48))
HAIR: Final[tuple[Color, ...]] = (
    (24, 20, 20),
    (58, 40, 30),
    (108, 74, 46),
    (215, 185, 120),
    (168, 168, 164),
    (135, 62, 32),
)
SHOES: Final[tuple[Color, ...]] = ((28, 28, 30), (232, 232, 228), (95, 62, 38), (120, 120, 124), (180, 40, 40))
BAGS: Final[tuple[Color, ...]] = (
    (30, 30, 32),
    (100, 66, 40),
    (34, 44, 90),
    (170, 40, 45),
    (110, 110, 112),
    (50, 100, 60),
    (200, 180, 140),
)
CARS: Final[tuple[Color, ...]] = ((200, 200, 205), (30, 30, 35), (150, 20, 25), (40, 60, 120), (90, 90, 95))


def pick(rng: np.random.Generator, palette: Sequence[Color], weights: Sequence[float] | None = None) -> Color:
    """A colour of ``palette``, uniformly or with ``weights`` (any positive scale), from ``rng``."""
    if weights is None:
        return palette[int(rng.integers(len(palette)))]
    p = np.asarray(weights, dtype=np.float64)
    return palette[int(rng.choice(len(palette), p=p / p.sum()))]
