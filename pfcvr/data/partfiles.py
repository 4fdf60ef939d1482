"""Per-image part files of T2I-VeRI / T2I-VeRW (the ``boxes`` field of a record).

A part file is a JSON list of detections ``{category, mask: 24x24 grid or flat 576 list of 0/1,
score}``. Detections of one category are merged by union (as the official loader does); a record
gets ``parts: {category: {box: bounding box of the marked cells in 0..1, grid, score}}``.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pfcvr.data.categories import PART_CATEGORIES

UNKNOWN_CATEGORY = ("error", "ignore")      # parts.unknown_category


def _grid(mask: Any) -> np.ndarray | str:
    """A detection mask as a square bool grid, or why it is not one."""
    try:
        arr = np.asarray(mask, dtype=np.float64)
    except (TypeError, ValueError):
        return "mask is not a list of numbers"
    if arr.ndim == 1:
        side = int(round(len(arr) ** 0.5))
        if side * side != len(arr) or side == 0:
            return f"flat mask of length {len(arr)} is not square (e.g. 576 = 24x24)"
        arr = arr.reshape(side, side)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.size == 0:
        return f"mask of shape {arr.shape} is not a square grid"
    if not np.isin(arr, (0, 1)).all():
        return "mask values must be 0 or 1"
    return arr.astype(bool)


def read_part_file(path: Path, unknown_category: str = "error",
                   ignored: Counter | None = None) -> dict | str:
    """Merged part regions of one part file, or why it is bad.

    Returns ``{category: {box: [x0, y0, x1, y1] in 0..1, grid: 2-D 0/1 list, score}}``; a category
    whose merged mask marks no cell is left out. A detection of a category outside the six makes
    the file bad with ``unknown_category="error"``; with ``"ignore"`` it is left out and counted
    in ``ignored`` (category -> detections), the known parts of the file are kept.
    """
    if unknown_category not in UNKNOWN_CATEGORY:
        raise ValueError(f"parts.unknown_category={unknown_category!r}: one of error | ignore")
    if not path.is_file():
        return "part file does not exist"
    try:
        dets = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"part file is not valid JSON ({err})"
    if not isinstance(dets, list):
        return "part file must be a JSON list of detections {category, mask, score}"
    merged: dict[str, np.ndarray] = {}
    scores: dict[str, float] = {}
    skipped: Counter = Counter()
    for j, det in enumerate(dets):
        if not isinstance(det, dict) or "category" not in det or "mask" not in det:
            return f"detection {j} is not a mapping with category and mask"
        cat = det["category"]
        if cat not in PART_CATEGORIES:
            if unknown_category == "ignore":
                skipped[str(cat)] += 1
                continue
            return f"detection {j}: unknown part category {cat!r} (known: {', '.join(PART_CATEGORIES)})"
        grid = _grid(det["mask"])
        if isinstance(grid, str):
            return f"detection {j} ({cat}): {grid}"
        if cat in merged and merged[cat].shape != grid.shape:
            return (f"detection {j} ({cat}): mask shape {grid.shape} differs from an earlier "
                    f"{merged[cat].shape}")
        merged[cat] = merged[cat] | grid if cat in merged else grid   # union, as the official loader
        score = det.get("score", 1.0)
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            return f"detection {j} ({cat}): score {score!r} is not a number"
        scores[cat] = max(scores.get(cat, float("-inf")), float(score))
    if ignored is not None:
        ignored.update(skipped)      # counted only for a file that is used
    out = {}
    for cat in PART_CATEGORIES:
        if cat not in merged or not merged[cat].any():
            continue
        g = merged[cat]
        rows, cols = np.flatnonzero(g.any(1)), np.flatnonzero(g.any(0))
        n = g.shape[0]
        box = [cols[0] / n, rows[0] / n, (cols[-1] + 1) / n, (rows[-1] + 1) / n]
        out[cat] = {"box": [round(float(v), 4) for v in box], "grid": g.astype(np.uint8).tolist(),
                    "score": round(scores[cat], 4)}
    return out
