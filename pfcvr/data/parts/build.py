"""The parts document of a manifest (``build_parts``), its stats, and the figure's examples."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.parts.prior import PRIOR_LAYOUTS, prior_regions
from pfcvr.data.parts.quality import agreement_with_annotations, assignment_quality, caption_phrases
from pfcvr.data.parts.regions import (REGION_SOURCE, ErrorLog, annotation_regions,
                                      detector_regions)

SOURCES = ("annotations", "groundingdino", "prior")
SOURCE_NOTES = {
    "annotations": "regions from the part annotations carried by the data (boxes / grids)",
    "groundingdino": "regions detected by GroundingDINO (best box per category)",
    "prior": "fixed per-view layout (side/front/rear) for a vehicle filling the frame; NOT "
             "detected or annotated, a fallback",
}



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
                detect: Callable[[list[int]], list[dict[str, dict]]] | None = None,
                unknown_category: str = "error") -> tuple[dict, dict]:
    """The parts document and its stats for manifest ``records``.

    ``detect(indices) -> detections`` is required for ``source='groundingdino'`` (one
    ``{category: {box, score}}`` per record index; see grounding.GroundingDetector).
    ``unknown_category`` (``parts.unknown_category``): ``error`` treats a manifest part outside
    the six categories as a bad region, ``ignore`` leaves it out (``stats["ignored"]``).
    """
    if source not in SOURCES:
        raise ValueError(f"parts.source={source!r}: must be one of {' | '.join(SOURCES)}")
    errors = ErrorLog(on_error)
    phrases = caption_phrases(records)
    extra: dict[str, Any] = {}
    ignored: Counter = Counter()
    if source == "annotations":
        regions = annotation_regions(records, errors, unknown_category, ignored)
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
    stats["ignored"] = {"unknown_category": sum(ignored.values()),
                        "categories": dict(sorted(ignored.items()))}
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
