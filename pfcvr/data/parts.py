"""Part pairs: for every manifest record a region per part category and the caption phrases.

Region sources (``parts.source``):
- ``annotations``: the manifest's ``parts`` boxes / grids, validated;
- ``groundingdino``: open-vocabulary detections (pfcvr.data.grounding), best box per category;
- ``prior``: a fixed layout per camera view (side / front / rear), not evidence of anything.

The output document (``data/parts/parts.json``) is aligned 1:1 with the manifest:
``{"categories", "source", "images": [{file_path, split, id, regions: {cat: region | null},
phrases: [{cat: [phrase, ...]} per caption]}]}`` with ``region = {box, grid?, source, score}``.
A category with no region is ``null`` (the model masks it out); categories without a phrase are
absent from a caption's phrase mapping.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from pfcvr.config import PART_CATEGORIES
from pfcvr.data.lexicon import assign_phrases, words

SOURCES = ("annotations", "groundingdino", "prior")
REGION_SOURCE = {"annotations": "annotation", "groundingdino": "groundingdino", "prior": "prior"}
BOX_EPS = 1e-6                 # tolerance of the [0, 1] range check (float round-off)
PRIOR_GRID = 24                # the official 24 x 24 patch grid; the Dataset resamples it
MAX_ERROR_EXAMPLES = 5
SOURCE_NOTES = {
    "annotations": "regions from the part annotations carried by the data (boxes / grids)",
    "groundingdino": "regions detected by GroundingDINO (best box per category)",
    "prior": "fixed per-view layout (side/front/rear) for a vehicle filling the frame; NOT "
             "detected or annotated, a fallback",
}

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


class PartsError(ValueError):
    """A record's part data is unusable; the message names the record."""


class _BadRegion(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def images_root(prepared_dir: str | Path, meta: dict) -> Path:
    """The images root of meta.json (absolute, or relative to the prepared folder)."""
    root = Path(str(meta.get("images_root") or "images")).expanduser()
    return root if root.is_absolute() else Path(prepared_dir) / root


def record_name(index: int, record: dict) -> str:
    return f"manifest record {index} (file_path {record.get('file_path')!r})"


# ----------------------------------------------------------------------------------------------
# Validation of one region
# ----------------------------------------------------------------------------------------------

def check_box(box: Any) -> list[float]:
    """A valid [x0, y0, x1, y1] in 0..1 with x1 > x0 and y1 > y0, or _BadRegion."""
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in box):
        raise _BadRegion("bad_region", f"box {box!r} is not four finite numbers")
    x0, y0, x1, y1 = (float(v) for v in box)
    if min(x0, y0, x1, y1) < -BOX_EPS or max(x0, y0, x1, y1) > 1 + BOX_EPS:
        raise _BadRegion("box_outside", f"box {box!r} lies outside the image (0..1 coordinates)")
    if x1 <= x0 or y1 <= y0:
        raise _BadRegion("degenerate_box", f"box {box!r} is degenerate (needs x1 > x0 and y1 > y0)")
    return [min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1)]


def check_grid(grid: Any) -> tuple[list[list[int]], list[float] | None]:
    """Validate a grid: (2-D list of 0/1 ints, bounding box or None when nothing is marked).

    Accepts a 2-D list or a flat list of a square length (the official 576-long masks). Plain
    Python: for 24 x 24 grids it is several times faster than going through numpy.
    """
    if not isinstance(grid, (list, tuple)) or not grid:
        raise _BadRegion("bad_region", "grid is not a non-empty list of 0/1 values")
    if not isinstance(grid[0], (list, tuple)):
        side = math.isqrt(len(grid))
        if side * side != len(grid):
            raise _BadRegion("bad_region", f"flat grid of {len(grid)} values is not square")
        grid = [grid[r * side:(r + 1) * side] for r in range(side)]
    width = len(grid[0])
    if not set(map(type, grid)) <= {list, tuple} or set(map(len, grid)) != {width} or not width:
        raise _BadRegion("bad_region", "grid is not a rectangular 2-D list of 0/1 values")
    try:
        values = set().union(*grid)
    except TypeError:
        raise _BadRegion("bad_region", "grid values must be 0 or 1") from None
    if not values <= {0, 1} or any(isinstance(v, (list, tuple, str)) for v in values):
        raise _BadRegion("bad_region", "grid values must be 0 or 1")
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


def _round_box(box: Iterable[float]) -> list[float]:
    return [round(float(v), 6) for v in box]


def annotation_region(region: Any) -> dict | None:
    """Validate one manifest region; the output region, or None when it marks nothing."""
    if region is None:
        return None
    if not isinstance(region, dict):
        raise _BadRegion("bad_region", f"region {region!r} is not a mapping with a box or a grid")
    box, grid = region.get("box"), region.get("grid")
    if box is None and grid is None:
        raise _BadRegion("bad_region", "region has neither a box nor a grid")
    out: dict[str, Any] = {}
    if grid is not None:
        grid, extent = check_grid(grid)
        if extent is None:
            return None  # an empty mask marks no region: recorded as missing
        out["grid"] = grid
        if box is None:
            box = extent
    out = {"box": _round_box(check_box(box)), **out}
    score = region.get("score", 1.0)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise _BadRegion("bad_region", f"score {score!r} is not a finite number")
    out["source"] = REGION_SOURCE["annotations"]
    out["score"] = float(score)
    return out


# ----------------------------------------------------------------------------------------------
# Region sources
# ----------------------------------------------------------------------------------------------

class _Errors:
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


def annotation_regions(records: list[dict], errors: _Errors) -> list[dict[str, dict | None]]:
    """Validated regions of every record from its manifest ``parts`` (missing -> None)."""
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
                errors.report(where, "unknown_category", f"unknown part category {cat!r} "
                              f"(known: {', '.join(PART_CATEGORIES)})")
                continue
            try:
                regions[cat] = annotation_region(region)
            except _BadRegion as bad:
                errors.report(where, bad.kind, str(bad))
        out.append(regions)
    return out


def _layout_region(boxes: list[tuple[float, float, float, float]]) -> dict:
    """A prior region: the union of ``boxes`` on the PRIOR_GRID grid plus its bounding box."""
    g = PRIOR_GRID
    centres = (np.arange(g) + 0.5) / g
    grid = np.zeros((g, g), dtype=bool)
    for x0, y0, x1, y1 in boxes:  # a handful of boxes per layout: built once, not per image
        grid |= ((centres[:, None] >= y0) & (centres[:, None] < y1) &
                 (centres[None, :] >= x0) & (centres[None, :] < x1))
    return {"box": _round_box(grid_box(grid)), "grid": grid.astype(np.uint8).tolist(),
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


def detector_regions(detections: list[dict[str, dict]]) -> list[dict[str, dict | None]]:
    """Regions from per-image detections ``{category: {box, score}}`` (see grounding.py)."""
    out = []
    for det in detections:
        regions = dict.fromkeys(PART_CATEGORIES)
        for cat, d in det.items():
            regions[cat] = {"box": _round_box(d["box"]), "source": REGION_SOURCE["groundingdino"],
                            "score": round(float(d["score"]), 6)}
        out.append(regions)
    return out


# ----------------------------------------------------------------------------------------------
# Phrases and their measured quality
# ----------------------------------------------------------------------------------------------

def caption_phrases(records: list[dict]) -> list[list[dict[str, list[str]]]]:
    """Per record, per caption: ``{category: [phrase, ...]}`` from the lexicon."""
    out = []
    for i, rec in enumerate(records):
        caps = rec.get("captions")
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise PartsError(f"{record_name(i, rec)}: `captions` must be a list of strings")
        out.append([assign_phrases(c) for c in caps])
    return out


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4)}


def assignment_quality(records: list[dict], phrases: list[list[dict]]) -> dict | None:
    """Precision/recall of the caption -> category assignment against ``caption_facts``.

    A (caption, category) pair is a true positive when the caption's facts mention the category
    and the lexicon assigned a phrase to it. ``phrase_recall``: fraction of true facts whose
    phrase is contained in an assigned phrase of the same category. ``phrase_precision``: over
    true-positive pairs, the mean fraction of the assigned phrases' words that belong to that
    category's true phrases (1.0 = nothing extra such as "It also had"). None without facts.
    """
    tp, fp, fn = Counter(), Counter(), Counter()
    facts_total = facts_found = n = 0
    tightness: list[float] = []
    for rec, per_caption in zip(records, phrases):
        facts = rec.get("caption_facts")
        if facts is None:
            continue
        if len(facts) != len(per_caption):
            continue  # malformed ground truth is not scored (the prepare stage owns it)
        for cap_facts, assigned in zip(facts, per_caption):
            n += 1
            true = {f.get("category") for f in cap_facts} & set(PART_CATEGORIES)
            pred = set(assigned)
            for c in PART_CATEGORIES:
                tp[c] += c in true and c in pred
                fp[c] += c in pred and c not in true
                fn[c] += c in true and c not in pred
            true_words: dict[str, set] = {}
            for f in cap_facts:
                if f.get("category") in PART_CATEGORIES and f.get("phrase"):
                    facts_total += 1
                    phrase = str(f["phrase"]).lower()
                    facts_found += any(phrase in p.lower() for p in assigned.get(f["category"], []))
                    true_words.setdefault(f["category"], set()).update(words(phrase))
            for c, tw in true_words.items():
                got = [w for p in assigned.get(c, []) for w in words(p)]
                if got:
                    tightness.append(sum(w in tw for w in got) / len(got))
    if n == 0:
        return None
    out = {**_prf(sum(tp.values()), sum(fp.values()), sum(fn.values())), "captions": n,
           "phrase_recall": round(facts_found / facts_total, 4) if facts_total else 0.0,
           "phrase_precision": round(float(np.mean(tightness)), 4) if tightness else 0.0}
    out["per_category"] = {c: {**_prf(tp[c], fp[c], fn[c]), "support": tp[c] + fn[c]}
                           for c in PART_CATEGORIES}
    return out


# ----------------------------------------------------------------------------------------------
# Agreement of a non-annotation source with the data's own boxes (when it has any)
# ----------------------------------------------------------------------------------------------

def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box arrays [..., 4] (x0, y0, x1, y1)."""
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def agreement_with_annotations(records: list[dict], regions: list[dict]) -> dict | None:
    """Mean box IoU per category between ``regions`` and valid manifest boxes (None if none).

    A manifest part that the source left without a region counts as IoU 0 (and as missed).
    """
    pairs: dict[str, list[tuple[list[float], list[float]]]] = {c: [] for c in PART_CATEGORIES}
    missed = Counter()
    for rec, reg in zip(records, regions):
        parts = rec.get("parts")
        if not isinstance(parts, dict):
            continue
        for c in PART_CATEGORIES:
            try:
                ann = annotation_region(parts.get(c))
            except _BadRegion:
                continue
            if ann is None:
                continue
            if reg.get(c) is None:
                missed[c] += 1
            else:
                pairs[c].append((ann["box"], reg[c]["box"]))
    counts = {c: len(pairs[c]) + missed[c] for c in PART_CATEGORIES}
    if not sum(counts.values()):
        return None
    sums = {c: float(_iou(np.array([a for a, _ in p]), np.array([b for _, b in p])).sum())
            if p else 0.0 for c, p in pairs.items()}
    return {"mean_iou": round(sum(sums.values()) / sum(counts.values()), 4),
            "per_category": {c: round(sums[c] / counts[c], 4) if counts[c] else None
                             for c in PART_CATEGORIES},
            "missed": {c: missed[c] for c in PART_CATEGORIES}}


# ----------------------------------------------------------------------------------------------
# The whole stage's computation
# ----------------------------------------------------------------------------------------------

def compute_stats(records: list[dict], images: list[dict], source: str) -> dict:
    """Coverage, counts and sources of a parts document's ``images`` (see module doc)."""
    n_img = len(images)
    n_cap = sum(len(im["phrases"]) for im in images)
    has_region = np.array([[im["regions"][c] is not None for c in PART_CATEGORIES]
                           for im in images], dtype=bool).reshape(n_img, len(PART_CATEGORIES))
    has_phrase = np.array([[c in p for c in PART_CATEGORIES]
                           for im in images for p in im["phrases"]],
                          dtype=bool).reshape(n_cap, len(PART_CATEGORIES))
    n_phr = sum(len(v) for im in images for p in im["phrases"] for v in p.values())
    sources = Counter(r["source"] for im in images for r in im["regions"].values() if r)
    splits = Counter(im["split"] for im in images)
    div = lambda a, b: round(a / b, 4) if b else 0.0  # noqa: E731
    return {
        "source": source,
        "source_note": SOURCE_NOTES[source],
        "num_images": n_img,
        "num_captions": n_cap,
        "images_per_split": dict(sorted(splits.items())),
        "coverage_images": {c: div(int(has_region[:, k].sum()), n_img)
                            for k, c in enumerate(PART_CATEGORIES)},
        "coverage_captions": {c: div(int(has_phrase[:, k].sum()), n_cap)
                              for k, c in enumerate(PART_CATEGORIES)},
        "regions_per_image": div(int(has_region.sum()), n_img),
        "images_without_regions": int((~has_region.any(1)).sum()),
        "phrases_per_caption": div(n_phr, n_cap),
        "categories_per_caption": div(int(has_phrase.sum()), n_cap),
        "captions_without_phrases": int((~has_phrase.any(1)).sum()),
        "region_sources": {s: sources.get(s, 0) for s in REGION_SOURCE.values()},
    }


def build_parts(records: list[dict], source: str, on_error: str = "raise",
                detect: Callable[[list[int]], list[dict[str, dict]]] | None = None
                ) -> tuple[dict, dict]:
    """The parts document and its stats for manifest ``records``.

    ``detect(indices) -> detections`` is required for ``source='groundingdino'`` (one
    ``{category: {box, score}}`` per record index; see grounding.GroundingDetector).
    """
    if source not in SOURCES:
        raise ValueError(f"parts.source={source!r}: must be one of {' | '.join(SOURCES)}")
    errors = _Errors(on_error)
    phrases = caption_phrases(records)
    extra: dict[str, Any] = {}
    if source == "annotations":
        regions = annotation_regions(records, errors)
    elif source == "prior":
        regions, used = prior_regions(records)
        extra["prior_layouts_used"] = {k: used.get(k, 0) for k in PRIOR_LAYOUTS}
    else:
        if detect is None:
            raise ValueError("parts.source=groundingdino needs a detector (detect=...)")
        regions = detector_regions(detect(list(range(len(records)))))
    images = [{"file_path": rec.get("file_path"), "split": rec.get("split"), "id": rec.get("id"),
               "regions": reg, "phrases": phr}
              for rec, reg, phr in zip(records, regions, phrases)]
    doc = {"categories": list(PART_CATEGORIES), "source": source, "images": images}
    stats = compute_stats(records, images, source)
    stats["dropped"] = {k: errors.counts.get(k, 0) for k in
                        ("unknown_category", "box_outside", "degenerate_box", "bad_region")}
    if errors.examples:
        stats["dropped_examples"] = errors.examples
    stats.update(extra)
    quality = assignment_quality(records, phrases)
    if quality is not None:
        stats["assignment"] = quality
    if source != "annotations":
        agree = agreement_with_annotations(records, regions)
        if agree is not None:
            stats["agreement_with_annotations"] = agree
    return doc, stats


def figure_items(doc: dict, images_root: Path, n: int = 4, records: list[dict] | None = None
                 ) -> list[dict]:
    """Up to ``n`` images for the part-pairs figure: most (region, phrase) pairs, views spread.

    The view is the manifest record's ``view`` when ``records`` are given, else the pattern of
    missing parts. Returns ``[{image: uint8 [H, W, 3], title, regions: {cat: box | None},
    phrases: {cat: [str]}}]``.
    """
    from PIL import Image

    images = doc["images"]

    def pairs(im: dict) -> int:
        cats = {c for p in im["phrases"] for c in p}
        return sum(im["regions"][c] is not None and c in cats for c in PART_CATEGORIES)

    def view(i: int) -> Any:
        if records is not None and records[i].get("view"):
            return records[i]["view"]
        return tuple(images[i]["regions"][c] is None for c in PART_CATEGORIES)

    counts = [pairs(im) for im in images]
    order = sorted((i for i in range(len(images)) if counts[i] > 0), key=lambda i: (-counts[i], i))
    chosen: list[int] = []
    seen: set = set()
    for i in order:  # the best image of each view first, then the next best overall
        if view(i) not in seen:
            seen.add(view(i))
            chosen.append(i)
        if len(chosen) == n:
            break
    chosen += [i for i in order if i not in chosen][: n - len(chosen)]
    items = []
    for i in sorted(chosen):
        im = images[i]
        with Image.open(images_root / im["file_path"]) as pil:
            arr = np.asarray(pil.convert("RGB"))
        merged: dict[str, list[str]] = {}
        for p in im["phrases"]:
            for c, texts in p.items():
                merged.setdefault(c, []).extend(t for t in texts if t not in merged.get(c, []))
        v = view(i)
        items.append({"image": arr, "title": f"#{i} id {im['id']}" + (f" ({v})" if isinstance(v, str)
                                                                     else "") + f"\n{im['file_path']}",
                      "regions": {c: (r["box"] if r else None) for c, r in im["regions"].items()},
                      "phrases": merged})
    return items
