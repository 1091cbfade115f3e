"""Drawing a planned image: the person, backdrop, clutter, occluder and camera effects in colour, and the same
shapes as part labels in the mask, so that image and mask align exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import Final

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from icg.data.synthetic.palette import CARS, GARMENT, Color, pick
from icg.data.synthetic.plan import Appearance, CameraScene, SyntheticImage
from icg.data.synthetic.spec import check_image_size

__all__ = ["PART_LABELS", "PartLabel", "render_synthetic"]


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


class _Painter:
    """Draws each shape twice, in colour on the image and as a part label on the mask, so the two align exactly."""

    def __init__(self, image: Image.Image, mask: Image.Image) -> None:
        self.image = ImageDraw.Draw(image)
        self.mask = ImageDraw.Draw(mask)

    def polygon(self, points: Sequence[tuple[float, float]], color: Color, label: PartLabel) -> None:
        self.image.polygon(points, fill=color)
        self.mask.polygon(points, fill=int(label))

    def ellipse(self, box: Sequence[float], color: Color, label: PartLabel) -> None:
        box = _ordered(box)
        self.image.ellipse(box, fill=color)
        self.mask.ellipse(box, fill=int(label))

    def chord(self, box: Sequence[float], start: float, end: float, color: Color, label: PartLabel) -> None:
        box = _ordered(box)
        self.image.chord(box, start, end, fill=color)
        self.mask.chord(box, start, end, fill=int(label))

    def pieslice(self, box: Sequence[float], start: float, end: float, color: Color, label: PartLabel) -> None:
        box = _ordered(box)
        self.image.pieslice(box, start, end, fill=color)
        self.mask.pieslice(box, start, end, fill=int(label))

    def rectangle(self, box: Sequence[float], color: Color, label: PartLabel, radius: float = 0.0) -> None:
        box = _ordered(box)
        self.image.rounded_rectangle(box, radius=radius, fill=color)
        self.mask.rounded_rectangle(box, radius=radius, fill=int(label))

    def line(self, points: Sequence[tuple[float, float]], color: Color, label: PartLabel, width: float) -> None:
        width = max(1, round(width))
        self.image.line(points, fill=color, width=width, joint="curve")
        self.mask.line(points, fill=int(label), width=width, joint="curve")


def _ordered(box: Sequence[float]) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _shade(color: Color, factor: float) -> Color:
    r, g, b = (int(min(255, c * factor)) for c in color)
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
                (b.x(-top_hw), b.y(0.47)),
                (b.x(top_hw), b.y(0.47)),
                (b.x(bottom_hw), b.y(knee)),
                (b.x(-bottom_hw), b.y(knee)),
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
            (b.x(-neck_hw), b.y(top)),
            (b.x(neck_hw), b.y(top)),
            (b.x(b.shoulder), b.y(shoulders)),
            (b.x(b.waist), b.y(waist)),
            (b.x(-b.waist), b.y(waist)),
            (b.x(-b.shoulder), b.y(shoulders)),
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
    dark = _shade(a.bag_color, 0.75)
    if b.view == "back":
        hw = 0.085 * b.build
        p.rectangle((b.x(-hw), b.y(0.19), b.x(hw), b.y(0.45)), a.bag_color, PartLabel.BAG, radius=0.02 * b.ph)
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
            a.bag_color,
            PartLabel.BAG,
            radius=0.02 * b.ph,
        )


def _draw_shoulder_bag(p: _Painter, a: Appearance, b: _Body) -> None:
    if b.profile:
        strap = [(b.x(0.0), b.y(0.17)), (b.x(0.0), b.y(0.41))]
        p.line(strap, _shade(a.bag_color, 0.75), PartLabel.BAG, 0.018 * b.ph)
        p.rectangle((b.x(-0.05), b.y(0.4), b.x(0.05), b.y(0.55)), a.bag_color, PartLabel.BAG, radius=0.01 * b.ph)
        return
    # The bag hangs on the same hip of the person; seen from behind that hip is on the other side of the image.
    side = a.bag_side if b.view == "front" else -a.bag_side
    p.line(
        [(b.x(-side * 0.07), b.y(0.16)), (b.x(side * (b.waist + 0.04)), b.y(0.41))],
        _shade(a.bag_color, 0.75),
        PartLabel.BAG,
        0.018 * b.ph,
    )
    p.rectangle(
        (b.x(side * (b.waist + 0.005)), b.y(0.4), b.x(side * (b.waist + 0.085)), b.y(0.55)),
        a.bag_color,
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
        color = pick(rng, CARS)
        left = -0.3 * width + 0.3 * width * pos
        p.rectangle((left, top, left + 1.6 * width, height + 10), color, bg, radius=0.08 * height)
        windows = (left + 0.1 * width, top + 0.12 * (height - top), left + 1.5 * width, top + 0.45 * (height - top))
        p.rectangle(windows, _shade(color, 0.45), bg)
        r = 0.09 * height
        for wx in (left + 0.25 * width, left + 1.35 * width):
            p.ellipse((wx - r, height - r, wx + r, height + r), (20, 20, 22), bg)
    elif image.occluder == "pole":
        cx = b.cx + (pos - 0.5) * 0.6 * width
        half = (0.035 + 0.045 * extent) * width
        color = pick(rng, ((110, 112, 115), (40, 70, 50), (150, 150, 150), (70, 60, 50)))
        p.rectangle((cx - half, -1, cx + half, height + 1), color, bg)
        p.line([(cx - 0.4 * half, -1), (cx - 0.4 * half, height + 1)], _shade(color, 1.3), bg, 0.3 * half)
    else:
        # Someone walking past the camera, close enough to cover one side of the person.
        side = -1 if pos < 0.5 else 1
        depth = (0.2 + 0.25 * extent) * width
        inner = depth if side < 0 else width - depth
        outer = -0.3 * width if side < 0 else 1.3 * width
        top = b.y(0.2 + 0.3 * rng.random())
        color = pick(rng, GARMENT)
        p.rectangle((outer, top, inner, height + 10), color, bg, radius=0.1 * width)


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
            color = pick(rng, GARMENT)
        else:
            base = scene.wall if y < scene.horizon * height else scene.ground
            color = tuple(int(np.clip(c + rng.uniform(-50, 50), 0, 255)) for c in base)
        if rng.random() < 0.2:
            draw.ellipse((x, y, x + w, y + h), fill=color)
        else:
            draw.rectangle((x, y, x + w, y + h), fill=color)
    for _ in range(int(rng.integers(0, 3))):
        x = rng.uniform(0, width)
        draw.line([(x, 0), (x, height)], fill=_shade(scene.wall, 0.6), width=1)


def render_synthetic(image: SyntheticImage, image_size: tuple[int, int] = (128, 64)) -> tuple[np.ndarray, np.ndarray]:
    """Draws one planned image and its part mask.

    Args:
        image: an entry of :func:`plan_synthetic`.
        image_size: ``(height, width)`` in pixels.

    Returns:
        ``(rgb, mask)``: the image, uint8 of shape ``(H, W, 3)`` (before JPEG compression), and the part labels,
        uint8 of shape ``(H, W)`` with the values of :class:`PartLabel`.
    """
    height, width = check_image_size(image_size)
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
