"""The ``prior`` region source: a fixed part layout per camera view, not evidence of anything.

Used where a dataset has neither part annotations nor a detector; its stats say so
(``SOURCE_NOTES["prior"]``).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.parts.regions import REGION_SOURCE, grid_box, round_box

PRIOR_GRID = 24                # the official 24 x 24 patch grid; the Dataset resamples it

# Fixed layouts: boxes [x0, y0, x1, y1] in 0..1 for a vehicle filling the frame. Each category is
# a union of boxes (both wheels, both lamps), stored as a grid; None = not visible in that view.
# Side layouts are symmetric so that the facing direction does not matter.
PRIOR_LAYOUTS: dict[str, dict[str, list[tuple[float, float, float, float]] | None]] = {
    "side": {
        "windows": [(0.30, 0.30, 0.70, 0.45)],
        "lights": [(0.03, 0.45, 0.11, 0.58), (0.89, 0.45, 0.97, 0.58)],
        "wheels": [(0.12, 0.66, 0.30, 0.92), (0.70, 0.66, 0.88, 0.92)],
        "mirrors": [(0.24, 0.42, 0.30, 0.50), (0.70, 0.42, 0.76, 0.50)],
        "roof": [(0.30, 0.20, 0.70, 0.30)],
        "doors": [(0.30, 0.45, 0.70, 0.74)],
    },
    "front": {
        "windows": [(0.22, 0.24, 0.78, 0.42)],
        "lights": [(0.08, 0.50, 0.28, 0.62), (0.72, 0.50, 0.92, 0.62)],
        "wheels": [(0.08, 0.76, 0.20, 0.95), (0.80, 0.76, 0.92, 0.95)],
        "mirrors": [(0.04, 0.38, 0.15, 0.48), (0.85, 0.38, 0.96, 0.48)],
        "roof": [(0.25, 0.14, 0.75, 0.24)],
        "doors": None,
    },
    "rear": {
        "windows": [(0.24, 0.24, 0.76, 0.42)],
        "lights": [(0.06, 0.48, 0.26, 0.60), (0.74, 0.48, 0.94, 0.60)],
        "wheels": [(0.08, 0.76, 0.20, 0.95), (0.80, 0.76, 0.92, 0.95)],
        "mirrors": [(0.04, 0.38, 0.14, 0.47), (0.86, 0.38, 0.96, 0.47)],
        "roof": [(0.25, 0.14, 0.75, 0.24)],
        "doors": None,
    },
}
# Manifest view name -> layout; anything else (or no view) uses the front layout.
VIEW_LAYOUT = {"side": "side", "side_left": "side", "side_right": "side", "left": "side",
               "right": "side", "front": "front", "rear": "rear", "back": "rear"}
DEFAULT_LAYOUT = "front"


def _layout_region(boxes: list[tuple[float, float, float, float]]) -> dict:
    """A prior region: the union of ``boxes`` on the PRIOR_GRID grid plus its bounding box."""
    g = PRIOR_GRID
    centres = (np.arange(g) + 0.5) / g
    grid = np.zeros((g, g), dtype=bool)
    for x0, y0, x1, y1 in boxes:  # a handful of boxes per layout: built once, not per image
        grid |= ((centres[:, None] >= y0) & (centres[:, None] < y1) &
                 (centres[None, :] >= x0) & (centres[None, :] < x1))
    return {"box": round_box(grid_box(grid)), "grid": grid.astype(np.uint8).tolist(),
            "source": REGION_SOURCE["prior"], "score": 0.0}


def prior_layouts() -> dict[str, dict[str, dict | None]]:
    """Every layout rendered once as regions: ``{layout: {category: region | None}}``."""
    return {name: {c: (None if layout[c] is None else _layout_region(layout[c]))
                   for c in PART_CATEGORIES} for name, layout in PRIOR_LAYOUTS.items()}


def prior_regions(records: list[dict]) -> tuple[list[dict[str, dict | None]], Counter]:
    """The fixed layout of each record's view; also the count of records per layout used."""
    layouts = prior_layouts()
    used: Counter = Counter()
    out = []
    for rec in records:
        name = VIEW_LAYOUT.get(str(rec.get("view") or "").lower(), DEFAULT_LAYOUT)
        used[name] += 1
        out.append(layouts[name])  # shared dicts: serialised, never mutated
    return out, used
