"""Part regions on the patch grid: boxes and annotation grids -> bool patch masks (vectorised).

A box marks every patch cell it covers by at least half, and always the cell that holds its
centre; an annotation grid (e.g. a 24 x 24 GroundingDINO mask) is resampled by the same area rule
(nearest-neighbour when upsampling) and keeps at least its best-covered cell. Used by the
datasets (pfcvr/data/dataset.py) once per split for all images.
"""
from __future__ import annotations

import numpy as np
import torch

from pfcvr.data.categories import PART_CATEGORIES

_HALF = 0.5 - 1e-6     # "covers at least half" with float round-off
_CHUNK = 4096          # grids resampled per matrix product


def _axis_coverage(lo: np.ndarray, hi: np.ndarray, g: int) -> np.ndarray:
    """Fraction of each of ``g`` equal cells of [0, 1] covered by [lo, hi]: [..., g]."""
    edges = np.arange(g + 1) / g
    return np.clip(np.minimum(hi[..., None], edges[1:]) - np.maximum(lo[..., None], edges[:-1]),
                   0.0, None) * g


def rasterize_boxes(boxes: np.ndarray, g: int) -> np.ndarray:
    """Boxes [..., 4] (x0, y0, x1, y1 in 0..1) -> bool masks [..., g, g] (row-major y, x).

    A cell is marked when the box covers at least half of it; the cell holding the box centre
    is always marked, so a box smaller than a cell still marks one.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    cx = _axis_coverage(boxes[..., 0], boxes[..., 2], g)            # [..., g]
    cy = _axis_coverage(boxes[..., 1], boxes[..., 3], g)
    mask = cy[..., :, None] * cx[..., None, :] >= _HALF             # [..., g, g]
    col = np.clip(np.floor((boxes[..., 0] + boxes[..., 2]) / 2 * g), 0, g - 1).astype(np.int64)
    row = np.clip(np.floor((boxes[..., 1] + boxes[..., 3]) / 2 * g), 0, g - 1).astype(np.int64)
    flat = mask.reshape(-1, g, g)
    flat[np.arange(flat.shape[0]), row.reshape(-1), col.reshape(-1)] = True
    return flat.reshape(mask.shape)


def _resample_matrix(src: int, g: int) -> np.ndarray:
    """[g, src]: fraction of target cell i covered by source cell s (rows sum to 1)."""
    edges = np.arange(src + 1) / src
    return _axis_coverage(edges[:-1], edges[1:], g).T


def resample_grids(grids: np.ndarray, g: int) -> np.ndarray:
    """Bool grids [K, H, W] -> bool [K, g, g] by the area rule (each keeps >= 1 cell if any)."""
    grids = np.asarray(grids, dtype=bool)
    k, h, w = grids.shape
    rows, cols = _resample_matrix(h, g), _resample_matrix(w, g).T
    # Chunks bound the float copy (a 24 x 24 grid is 4.6 kB as float64).
    cover = np.concatenate([rows @ grids[i:i + _CHUNK].astype(np.float64) @ cols
                            for i in range(0, k, _CHUNK)]) if k else np.zeros((0, g, g))
    mask = cover >= _HALF
    empty = ~mask.reshape(k, -1).any(1) & (grids.reshape(k, -1).any(1))
    if empty.any():  # a part thinner than half a target cell keeps its best-covered cell
        best = cover[empty].reshape(int(empty.sum()), -1).argmax(1)
        sub = mask[empty].reshape(int(empty.sum()), -1)
        sub[np.arange(sub.shape[0]), best] = True
        mask[empty] = sub.reshape(-1, g, g)
    return mask


def part_masks(entries: list[dict], g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks bool [N, 6, g, g] and presence bool [N, 6] of parts entries (grid over box)."""
    n, c = len(entries), len(PART_CATEGORIES)
    boxes = np.zeros((n, c, 4))
    boxes[..., 2:] = 1.0
    present = np.zeros((n, c), dtype=bool)
    grids: dict[tuple[int, int], list[tuple[int, int, list]]] = {}
    for i, ent in enumerate(entries):
        regions = ent.get("regions") or {}
        for k, cat in enumerate(PART_CATEGORIES):
            reg = regions.get(cat)
            if not reg:
                continue
            present[i, k] = True
            grid = reg.get("grid")
            if grid is not None:
                grids.setdefault((len(grid), len(grid[0])), []).append((i, k, grid))
            else:
                boxes[i, k] = reg["box"]
    masks = rasterize_boxes(boxes, g)
    masks[~present] = False
    for items in grids.values():  # one conversion and one vectorised resample per grid shape
        rows, cols = [t[0] for t in items], [t[1] for t in items]
        masks[rows, cols] = resample_grids(np.array([t[2] for t in items], dtype=bool), g)
    return torch.from_numpy(masks), torch.from_numpy(present)
