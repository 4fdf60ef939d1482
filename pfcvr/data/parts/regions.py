"""Part regions from the manifest's annotations or a detector: validation and error policy.

A region is ``{box: [x0, y0, x1, y1] in 0..1, grid?: 2-D 0/1 list, source, score}``. Bad regions
raise :class:`PartsError` naming the record (``data.on_error: raise``) or are counted and dropped
(``skip``), see :class:`ErrorLog`.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable

import numpy as np

from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.manifest import record_name

REGION_SOURCE = {"annotations": "annotation", "groundingdino": "groundingdino", "prior": "prior"}
BOX_EPS = 1e-6                 # tolerance of the [0, 1] range check (float round-off)
MAX_ERROR_EXAMPLES = 5


class PartsError(ValueError):
    """A record's part data is unusable; the message names the record."""


class BadRegion(Exception):
    """One invalid region; ``kind`` is its counter in the stats' ``dropped`` (box_outside, ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------------------------
# Validation of one region
# ----------------------------------------------------------------------------------------------

def check_box(box: Any) -> list[float]:
    """A valid [x0, y0, x1, y1] in 0..1 with x1 > x0 and y1 > y0, or BadRegion."""
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in box):
        raise BadRegion("bad_region", f"box {box!r} is not four finite numbers")
    x0, y0, x1, y1 = (float(v) for v in box)
    if min(x0, y0, x1, y1) < -BOX_EPS or max(x0, y0, x1, y1) > 1 + BOX_EPS:
        raise BadRegion("box_outside", f"box {box!r} lies outside the image (0..1 coordinates)")
    if x1 <= x0 or y1 <= y0:
        raise BadRegion("degenerate_box", f"box {box!r} is degenerate (needs x1 > x0 and y1 > y0)")
    return [min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1)]


def check_grid(grid: Any) -> tuple[list[list[int]], list[float] | None]:
    """Validate a grid: (2-D list of 0/1 ints, bounding box or None when nothing is marked).

    Accepts a 2-D list or a flat list of a square length (the official 576-long masks). Plain
    Python: for 24 x 24 grids it is several times faster than going through numpy.
    """
    if not isinstance(grid, (list, tuple)) or not grid:
        raise BadRegion("bad_region", "grid is not a non-empty list of 0/1 values")
    if not isinstance(grid[0], (list, tuple)):
        side = math.isqrt(len(grid))
        if side * side != len(grid):
            raise BadRegion("bad_region", f"flat grid of {len(grid)} values is not square")
        grid = [grid[r * side:(r + 1) * side] for r in range(side)]
    width = len(grid[0])
    if not set(map(type, grid)) <= {list, tuple} or set(map(len, grid)) != {width} or not width:
        raise BadRegion("bad_region", "grid is not a rectangular 2-D list of 0/1 values")
    try:
        values = set().union(*grid)
    except TypeError:
        raise BadRegion("bad_region", "grid values must be 0 or 1") from None
    if not values <= {0, 1} or any(isinstance(v, (list, tuple, str)) for v in values):
        raise BadRegion("bad_region", "grid values must be 0 or 1")
    if not all(type(v) is int for v in values):  # True / 1.0 -> 1
        grid = [[int(v) for v in row] for row in grid]
    elif tuple in set(map(type, grid)):
        grid = [list(row) for row in grid]
    rows = [i for i, row in enumerate(grid) if 1 in row]
    if not rows:
        return grid, None
    cols = [j for j, col in enumerate(zip(*grid[rows[0]:rows[-1] + 1])) if 1 in col]
    h, w = len(grid), width
    return grid, [cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h]


def grid_box(grid: np.ndarray) -> list[float] | None:
    """Bounding box (0..1) of the marked cells of a grid; None when no cell is marked."""
    rows, cols = np.flatnonzero(grid.any(1)), np.flatnonzero(grid.any(0))
    if rows.size == 0:
        return None
    h, w = grid.shape
    return [float(cols[0] / w), float(rows[0] / h), float((cols[-1] + 1) / w),
            float((rows[-1] + 1) / h)]


def round_box(box: Iterable[float]) -> list[float]:
    return [round(float(v), 6) for v in box]


def annotation_region(region: Any) -> dict | None:
    """Validate one manifest region; the output region, or None when it marks nothing."""
    if region is None:
        return None
    if not isinstance(region, dict):
        raise BadRegion("bad_region", f"region {region!r} is not a mapping with a box or a grid")
    box, grid = region.get("box"), region.get("grid")
    if box is None and grid is None:
        raise BadRegion("bad_region", "region has neither a box nor a grid")
    out: dict[str, Any] = {}
    if grid is not None:
        grid, extent = check_grid(grid)
        if extent is None:
            return None  # an empty mask marks no region: recorded as missing
        out["grid"] = grid
        if box is None:
            box = extent
    out = {"box": round_box(check_box(box)), **out}
    score = region.get("score", 1.0)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise BadRegion("bad_region", f"score {score!r} is not a finite number")
    out["source"] = REGION_SOURCE["annotations"]
    out["score"] = float(score)
    return out



# ----------------------------------------------------------------------------------------------
# Region sources
# ----------------------------------------------------------------------------------------------

class ErrorLog:
    """Bad regions: raise at once (data.on_error raise) or count and drop them (skip)."""

    def __init__(self, on_error: str):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"data.on_error={on_error!r}: must be raise or skip")
        self.on_error = on_error
        self.counts: Counter = Counter()
        self.examples: list[str] = []

    def report(self, where: str, kind: str, message: str) -> None:
        text = f"{where}: {message}"
        if self.on_error == "raise":
            raise PartsError(f"{text}. Fix the part data, or set data.on_error: skip to count "
                             "and drop such regions")
        self.counts[kind] += 1
        if len(self.examples) < MAX_ERROR_EXAMPLES:
            self.examples.append(text)


def annotation_regions(records: list[dict], errors: ErrorLog, unknown_category: str = "error",
                       ignored: Counter | None = None) -> list[dict[str, dict | None]]:
    """Validated regions of every record from its manifest ``parts`` (missing -> None).

    A category outside the six is an error (``unknown_category="error"``, reported through
    ``errors``) or left out and counted in ``ignored`` (``"ignore"``); the record's known parts
    are kept either way.
    """
    if unknown_category not in ("error", "ignore"):
        raise ValueError(f"parts.unknown_category={unknown_category!r}: one of error | ignore")
    out = []
    for i, rec in enumerate(records):
        parts = rec.get("parts") or {}
        regions: dict[str, dict | None] = dict.fromkeys(PART_CATEGORIES)
        if not isinstance(parts, dict):
            errors.report(record_name(i, rec), "bad_region",
                          "`parts` must be a mapping category -> {box, grid?, score?}")
            out.append(regions)
            continue
        for cat, region in parts.items():
            where = f"{record_name(i, rec)}, part {cat!r}"
            if cat not in regions:
                if unknown_category == "ignore":
                    if ignored is not None:
                        ignored[str(cat)] += 1
                    continue
                errors.report(where, "unknown_category", f"unknown part category {cat!r} "
                              f"(known: {', '.join(PART_CATEGORIES)}); parts.unknown_category: "
                              "ignore leaves such parts out")
                continue
            try:
                regions[cat] = annotation_region(region)
            except BadRegion as bad:
                errors.report(where, bad.kind, str(bad))
        out.append(regions)
    return out



def detector_regions(detections: list[dict[str, dict]]) -> list[dict[str, dict | None]]:
    """Regions from per-image detections ``{category: {box, score}}`` (see grounding.py)."""
    out = []
    for det in detections:
        regions = dict.fromkeys(PART_CATEGORIES)
        for cat, d in det.items():
            regions[cat] = {"box": round_box(d["box"]), "source": REGION_SOURCE["groundingdino"],
                            "score": round(float(d["score"]), 6)}
        out.append(regions)
    return out
