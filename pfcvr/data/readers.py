"""Real datasets -> canonical manifest records (``data.source``: t2i-veri | t2i-verw | cuhk-pedes).

Formats (method document §1.2-1.3, §1.7):

- ``t2i-veri`` / ``t2i-verw``: one JSON list of per-image records ``{split, id, file_path,
  captions, boxes?, mask?, prompt?}`` in the dataset folder; ``file_path`` and ``boxes`` are
  relative to that folder (Windows back-slashes accepted). ``boxes`` names a per-image part file:
  a list of detections ``{category, mask: 24x24 grid or flat 576 list of 0/1, score}``.
  Detections of one category are merged by union; a record gets
  ``parts: {category: {box: bounding box of the marked cells in 0..1, grid, score}}``.
  ``mask`` (the official MIM guide) and ``prompt`` (unused by the official model) are not kept:
  the model builds its MIM mask from the part grids.
  Splits: ``train`` and ``test`` as given, anything else is ``val``. A file without ``test`` but
  with ``val`` records (T2I-VeRW) uses its val as the test set, as published.
- ``cuhk-pedes``: the text-based person re-ID layout ``reid_raw.json`` (records ``{split, id,
  file_path, captions, ...}``, splits train/val/test), images under ``<root>/imgs/`` when that
  folder exists, else under ``<root>``.

When no validation split remains, ``data.val_fraction`` of the training identities are moved to
``val`` (model selection never looks at test). Images are not copied: the manifest's
``file_path`` stays relative to the images root, which prepare records in meta.json.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from pfcvr.config import PART_CATEGORIES
from pfcvr.data.manifest import Problems, apply_on_error, carve_val, identity_split_problems

DEFAULT_ANNOTATIONS = {
    "t2i-veri": "reid_with_mask_prompt_and_boxes_filepath_refixID.json",
    "t2i-verw": "reid_with_mask_prompt_and_boxes_filepath_prefixid_idsplit_70_30.json",
    "cuhk-pedes": "reid_raw.json",
}
PARALLEL_MIN = 1000        # images checked in worker processes from this many on


@dataclass
class ReadResult:
    records: list[dict]
    images_root: Path                       # absolute; manifest file_paths are relative to it
    annotations: Path
    skipped: dict[str, int] = field(default_factory=dict)
    val_carved_ids: int = 0                 # training identities moved to val
    val_is_test: bool = False               # the source's val split became test (T2I-VeRW)


def _posix(path: str) -> str:
    """A relative path with forward slashes (Windows back-slashes accepted)."""
    p = path.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def _unsafe(rel: str) -> str | None:
    pure = PurePosixPath(rel)
    if pure.is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        return "must be relative to the dataset folder"
    if ".." in pure.parts:
        return "must not leave the dataset folder ('..')"
    return None


def check_image(path: str) -> str | None:
    """None when the image decodes, else why not (missing, unreadable, corrupt)."""
    if not os.path.isfile(path):
        return "missing"
    try:
        with Image.open(path) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))  # JPEG: fast DCT scaling
            im.load()
            if im.width < 1 or im.height < 1:
                return "corrupt: empty image"
    except Exception as err:  # PIL raises many types for bad files
        return f"corrupt: {type(err).__name__}: {err}"
    return None


def check_images(paths: list[str], workers: int | None = None) -> list[str | None]:
    """:func:`check_image` for many files, in worker processes for large sets."""
    workers = workers or os.cpu_count() or 1
    if len(paths) < PARALLEL_MIN or workers < 2:
        return [check_image(p) for p in paths]
    with mp.get_context("spawn").Pool(workers) as pool:
        return pool.map(check_image, paths, chunksize=64)


# ----------------------------------------------------------------------------------------------
# Part files
# ----------------------------------------------------------------------------------------------

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


def read_part_file(path: Path) -> dict | str:
    """Merged part regions of one part file, or why it is bad.

    Returns ``{category: {box: [x0, y0, x1, y1] in 0..1, grid: 2-D 0/1 list, score}}``; a category
    whose merged mask marks no cell is left out.
    """
    if not path.is_file():
        return "part file does not exist"
    try:
        dets = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"part file is not valid JSON ({err})"
    if not isinstance(dets, list):
        return "part file must be a JSON list of detections {category, mask, score}"
    merged: dict[str, np.ndarray] = {}
    scores: dict[str, float] = {}
    for j, det in enumerate(dets):
        if not isinstance(det, dict) or "category" not in det or "mask" not in det:
            return f"detection {j} is not a mapping with category and mask"
        cat = det["category"]
        if cat not in PART_CATEGORIES:
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


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------

def _parse_record(i: int, raw: Any, problems: Problems, with_boxes: bool, root: Path) -> dict | None:
    """One raw record -> canonical record (split not yet mapped), or None (problems added)."""
    if not isinstance(raw, dict):
        problems.add(i, None, "bad_record", f"record is a {type(raw).__name__}, not a mapping")
        return None
    fp = raw.get("file_path")
    name = fp if isinstance(fp, str) else None
    missing = [k for k in ("split", "id", "file_path", "captions") if k not in raw]
    if missing:
        problems.add(i, name, "missing_field", f"missing required field(s) {', '.join(missing)}")
        return None
    bad = len(problems)
    if not isinstance(raw["split"], str):
        problems.add(i, name, "bad_split", f"split {raw['split']!r} is not a string")
    pid = raw["id"]
    if isinstance(pid, str) and pid.strip().lstrip("-").isdigit():
        pid = int(pid)
    if isinstance(pid, float) and pid.is_integer():
        pid = int(pid)
    if isinstance(pid, bool) or not isinstance(pid, int):
        problems.add(i, name, "bad_id", f"id {raw['id']!r} is not an integer")
    if not isinstance(fp, str) or not fp.strip():
        problems.add(i, name, "bad_file_path", f"file_path {fp!r} is not a non-empty string")
    else:
        fp = _posix(fp)
        if (why := _unsafe(fp)) is not None:
            problems.add(i, name, "bad_file_path", f"file_path {fp!r} {why}")
    caps = raw["captions"]
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        problems.add(i, name, "bad_captions", "captions must be a list of strings")
    elif not caps:
        problems.add(i, name, "empty_caption", "no captions")
    elif any(not c.strip() for c in caps):
        empty = [k for k, c in enumerate(caps) if not c.strip()]
        problems.add(i, name, "empty_caption", f"caption {empty[0]} is empty"
                     + (f" ({len(empty)} empty captions)" if len(empty) > 1 else ""))
    rec = {"split": raw["split"], "id": pid, "file_path": fp,
           "captions": [" ".join(c.split()) for c in caps] if isinstance(caps, list) and
           all(isinstance(c, str) for c in caps) else caps}
    boxes = raw.get("boxes") if with_boxes else None
    if boxes not in (None, ""):
        if not isinstance(boxes, str):
            problems.add(i, name, "bad_part_file", f"boxes {boxes!r} is not a path string")
        else:
            rel = _posix(boxes)
            why = _unsafe(rel)
            parts = f"boxes path {rel!r} {why}" if why else read_part_file(root / rel)
            if isinstance(parts, str):
                kind = ("missing_part_file" if parts == "part file does not exist" else
                        "unknown_part_category" if "unknown part category" in parts else "bad_part_file")
                problems.add(i, name, kind, f"{parts}: {root / rel}" if kind == "missing_part_file"
                             else f"{parts} ({rel})")
            else:
                rec["parts"] = parts
    return rec if len(problems) == bad else None


def read_source(source: str, root: str | Path, annotations: str = "", *, val_fraction: float,
                seed: int, on_error: str = "raise", workers: int | None = None) -> ReadResult:
    """Read a real dataset into canonical records (see the module docstring).

    ``root``: the dataset folder; ``annotations``: the JSON file inside it ("" = the source's usual
    name). Bad records raise a DataError listing the first offenders and the total, or with
    ``on_error="skip"`` are dropped and counted in ``ReadResult.skipped``.
    """
    if source not in DEFAULT_ANNOTATIONS:
        raise ValueError(f"data.source={source!r}: readers exist for {', '.join(DEFAULT_ANNOTATIONS)}")
    if not str(root).strip():
        raise ValueError(f"data.root is empty: set it to the {source} dataset folder "
                         f"(e.g. dvc exp run -S data.root=/path/to/dataset)")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={str(root)!r}: dataset folder not found")
    ann = root / _posix(annotations or DEFAULT_ANNOTATIONS[source])
    if not ann.is_file():
        found = sorted(p.name for p in root.glob("*.json"))[:10]
        raise FileNotFoundError(f"data.annotations: {ann} not found; JSON files in {root}: "
                                f"{', '.join(found) or 'none'} (set data.annotations to one of them)")
    try:
        raw = json.loads(ann.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{ann}: not valid JSON ({err})") from None
    if not isinstance(raw, list):
        raise ValueError(f"{ann}: must be a JSON list of per-image records, got {type(raw).__name__}")
    images_root = root / "imgs" if source == "cuhk-pedes" and (root / "imgs").is_dir() else root
    problems = Problems(str(ann))
    records: list[dict | None] = [
        _parse_record(i, r, problems, source != "cuhk-pedes", root) for i, r in enumerate(raw)]

    # splits
    val_is_test = False
    if source == "cuhk-pedes":
        for i, rec in enumerate(records):
            if rec is not None and rec["split"] not in ("train", "val", "test"):
                problems.add(i, rec["file_path"], "bad_split",
                             f"split {rec['split']!r} is not one of train, val, test")
                records[i] = None
    else:
        names = {r["split"] for r in records if r is not None}
        val_is_test = "test" not in names and any(s != "train" for s in names)
        for rec in filter(None, records):
            s = rec["split"]
            rec["split"] = s if s in ("train", "test") else ("test" if val_is_test else "val")

    # images: every record still standing must point at a decodable image
    todo = [(i, r) for i, r in enumerate(records) if r is not None]
    for (i, rec), why in zip(todo, check_images([str(images_root / r["file_path"]) for _, r in todo],
                                                workers)):
        if why == "missing":
            problems.add(i, rec["file_path"], "missing_image",
                         f"image file not found: {images_root / rec['file_path']}")
        elif why is not None:
            problems.add(i, rec["file_path"], "corrupt_image", f"unreadable image: {why}")
    bad = problems.bad_indices()
    problems.extend(identity_split_problems(
        [(i, r) for i, r in enumerate(records) if r is not None and i not in bad], str(ann)))
    kept, skipped = apply_on_error(records, problems, on_error)
    if not kept:
        raise ValueError(f"{ann}: no usable records left (skipped: {skipped})")
    carved = 0
    if not any(r["split"] == "val" for r in kept):
        kept, carved = carve_val(kept, val_fraction, seed)
    for s in ("train", "test"):
        if not any(r["split"] == s for r in kept):
            raise ValueError(f"{ann}: no {s} records left (after skipping {skipped.get('total', 0)} "
                             "bad ones); the pipeline needs train and test splits")
    return ReadResult(kept, images_root, ann, skipped, carved, val_is_test)
