"""One camera image of an identity: background, vehicle, occlusion, lighting, noise, part regions.

Deterministic given the caller's generator; the noise tiles are fixed (seeded by their index), so
every worker process renders the same bytes.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.synthetic.pen import END_PROFILES, SIDE_PROFILES, SS, Pen, shade
from pfcvr.data.synthetic.vehicles import draw_end, draw_side
from pfcvr.data.synthetic.vocabulary import GLOBAL, PART_GRID, VISIBLE_PARTS

GRID_IF_BELOW = 0.8        # a region gets a grid when its elements cover < 80% of its box's cells


def _draw_background(img: Image.Image, rng: np.random.Generator, horizon: float) -> None:
    """Sky or wall, road, buildings, poles and lane marks in muted colours."""
    C = img.size[0]
    d = ImageDraw.Draw(img)
    sky = tuple(int(x) for x in rng.integers(120, 220, size=3))
    ground = tuple(int(x) for x in rng.integers(70, 140, size=1).repeat(3) + rng.integers(-12, 12, size=3))
    d.rectangle((0, 0, C, horizon), fill=sky)
    d.rectangle((0, horizon, C, C), fill=ground)
    for _ in range(int(rng.integers(2, 6))):  # buildings / walls
        w, h = rng.uniform(0.12, 0.4) * C, rng.uniform(0.1, 0.45) * C
        x = rng.uniform(-0.1, 1.0) * C
        col = tuple(int(v) for v in rng.integers(60, 200, size=3))
        d.rectangle((x, horizon - h, x + w, horizon), fill=col)
        for _ in range(int(rng.integers(0, 6))):
            wx, wy = x + rng.uniform(0, w), horizon - rng.uniform(0.1, 0.9) * h
            d.rectangle((wx, wy, wx + 0.03 * C, wy + 0.03 * C), fill=shade(col, 0.6))
    for _ in range(int(rng.integers(0, 3))):  # far poles
        x = rng.uniform(0, C)
        d.rectangle((x, horizon - rng.uniform(0.2, 0.5) * C, x + 0.012 * C, horizon), fill=(70, 70, 74))
    lane_y = horizon + rng.uniform(0.35, 0.8) * (C - horizon)
    for x in np.arange(rng.uniform(-0.2, 0) * C, C, 0.22 * C):  # lane dashes
        d.rectangle((x, lane_y, x + 0.11 * C, lane_y + 0.012 * C), fill=(225, 220, 200))


def _grid(boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """PART_GRID x PART_GRID bool cells whose centre lies in a box (each box marks >= 1 cell)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centres = (np.arange(PART_GRID) + 0.5) / PART_GRID
    cols = (centres >= b[:, :1]) & (centres <= b[:, 2:3])          # [k, G]
    rows = (centres >= b[:, 1:2]) & (centres <= b[:, 3:4])
    mid = np.minimum(((b[:, :2] + b[:, 2:]) / 2 * PART_GRID).astype(int), PART_GRID - 1)
    k = np.arange(len(b))
    cols[k, mid[:, 0]] |= ~cols.any(1)                              # a thin box marks its centre
    rows[k, mid[:, 1]] |= ~rows.any(1)
    return (rows[:, :, None] & cols[:, None, :]).any(0)


_NOISE_SIGMAS = (1.5, 3.0, 4.5)
_NOISE: dict[tuple[int, int], Image.Image] = {}


def _noise_tile(i: int, side: int) -> Image.Image:
    """A fixed RGB tile of Gaussian noise around 128 (the same in every process)."""
    if (i, side) not in _NOISE:
        rng = np.random.default_rng([1234, i, side])
        arr = 128 + _NOISE_SIGMAS[i] * rng.standard_normal((side, side, 3))
        _NOISE[(i, side)] = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    return _NOISE[(i, side)]


def render(attrs: dict, view: str, size: int, rng: np.random.Generator
           ) -> tuple[Image.Image, dict[str, dict]]:
    """Render one camera image of an identity.

    Returns (RGB image of ``size`` x ``size``, parts) where parts maps each category visible in
    ``view`` to ``{"box": [x0, y0, x1, y1] in 0..1}``, plus ``"grid"`` (PART_GRID x PART_GRID 0/1
    list of the cells of the separate elements) when the elements fill < GRID_IF_BELOW of the box.
    """
    C = size * SS
    side = view.startswith("side")
    kind = SIDE_PROFILES if side else END_PROFILES
    prof = kind[attrs[GLOBAL]["type"]]
    if side:
        s = C * rng.uniform(0.74, 0.9)
        extent = (-0.1, 1.0)                   # mirror sticks out in front of u=0
        height = prof.get("cargo", (0, 0, 0))[2] or 0
        height = max(height, prof["top"]) + 0.08
    else:
        s = C * rng.uniform(0.5, 0.64)
        extent = (-0.58, 0.58)
        height = prof["top"] + 0.08
    ground = C * rng.uniform(0.8, 0.92)
    ground = max(ground, height * s + 0.03 * C)
    ground = min(ground, C - 0.02 * C)
    width = (extent[1] - extent[0]) * s
    left = (C - width) / 2 + rng.uniform(-0.06, 0.06) * C
    left = min(max(left, 0.01 * C), C - width - 0.01 * C)
    bg = Image.new("RGB", (C, C))
    horizon = ground - rng.uniform(0.25, 0.6) * height * s
    _draw_background(bg, rng, horizon)
    ImageDraw.Draw(bg).ellipse((left - 0.02 * C, ground - 0.03 * C, left + width + 0.02 * C,
                                ground + 0.03 * C), fill=(40, 40, 42))  # shadow
    angle = rng.uniform(-5.0, 5.0)
    centre = (left + width / 2, ground - height * s / 2)
    draw = ImageDraw.Draw(bg)
    if view == "side_right":  # front of the vehicle at the right: mirrored drawing
        pen = Pen(draw, left + width + extent[0] * s, ground, s, -s, centre, angle)
    else:
        pen = Pen(draw, left - extent[0] * s, ground, s, s, centre, angle)
    if side:
        draw_side(pen, attrs)
    else:
        draw_end(pen, attrs, rear=view == "rear")
    if rng.random() < 0.3:  # partial occlusion: a pole or a bush in front of the vehicle
        d = ImageDraw.Draw(bg)
        if rng.random() < 0.5:
            x = left + rng.uniform(0.1, 0.9) * width
            grey = tuple(int(v) for v in rng.integers(50, 140, 3))
            d.rectangle((x, 0, x + rng.uniform(0.03, 0.05) * C, C), fill=grey)
        else:
            x = left + (0 if rng.random() < 0.5 else width) + rng.uniform(-0.1, 0.1) * width
            w, h = rng.uniform(0.15, 0.25) * C, rng.uniform(0.12, 0.22) * C
            d.ellipse((x - w / 2, ground - h, x + w / 2, ground + h / 2),
                      fill=(int(rng.integers(30, 70)), int(rng.integers(90, 140)), int(rng.integers(30, 70))))
    img = bg.reduce(SS)
    # illumination, colour cast, blur and sensor noise
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.8))))
    gain = rng.uniform(0.7, 1.25) * rng.uniform(0.92, 1.08, size=3)
    ramp = np.arange(256, dtype=np.float64)
    lut = np.concatenate([ramp * g for g in gain]) + rng.uniform(-15, 15)
    img = img.point(np.clip(lut + 0.5, 0, 255).astype(np.uint8).tolist())   # per-channel gain + offset
    if rng.random() < 0.5:  # sensor noise (kept mild: noise is what makes PNGs large)
        tile = _noise_tile(int(rng.integers(len(_NOISE_SIGMAS))), max(256, 2 * size))
        x, y = (int(v) for v in rng.integers(0, tile.size[0] - size, 2))
        img = ImageChops.add(img, tile.crop((x, y, x + size, y + size)), 1.0, -128)
    parts = {}
    for cat in PART_CATEGORIES:
        if cat not in VISIBLE_PARTS[view] or cat not in pen.elements:
            continue
        boxes = []
        for box in pen.elements[cat]:
            x0, y0, x1, y1 = box
            x0, y0, x1, y1 = (max(0.0, x0 / C), max(0.0, y0 / C), min(1.0, x1 / C), min(1.0, y1 / C))
            if x1 > x0 and y1 > y0:
                boxes.append((x0, y0, x1, y1))
        if boxes:
            union = [min(b[0] for b in boxes), min(b[1] for b in boxes),
                     max(b[2] for b in boxes), max(b[3] for b in boxes)]
            region = {"box": [round(v, 4) for v in union]}
            grid = _grid(boxes)
            # Keep the grid only where the box is a poor stand-in (two wheels, two lamps, two
            # mirrors): it is 576 numbers, and consumers rasterise a lone box themselves.
            if grid.sum() < GRID_IF_BELOW * _grid([union]).sum():
                region["grid"] = grid.astype(np.uint8).tolist()
            parts[cat] = region
    return img, parts

