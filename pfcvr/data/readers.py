"""Real datasets -> canonical manifest records (``data.source``, layouts in :mod:`.sources`).

- ``t2i-veri`` / ``t2i-verw``: one JSON list of per-image records ``{split, id, file_path,
  captions, boxes?, mask?, prompt?}`` in the dataset folder; ``file_path`` and ``boxes`` are
  relative to that folder (Windows back-slashes accepted). ``boxes`` names a per-image part file
  (:mod:`pfcvr.data.partfiles`). ``mask`` (the official MIM guide) and ``prompt`` (unused by the
  official model) are not kept: the model builds its MIM mask from the part grids.
  Splits: ``train`` and ``test`` as given, anything else is ``val``. A file without ``test`` but
  with ``val`` records (T2I-VeRW) uses its val as the test set, as published.
- ``cuhk-pedes`` (``reid_raw.json``), ``icfg-pedes`` (``ICFG-PEDES.json``, train/test only) and
  ``rstpreid`` (``data_captions.json``, image path in ``img_path``): text-based person re-ID
  layouts, images under ``<root>/imgs/`` when that folder exists, else under ``<root>``.

Records of one image listed several times are merged (:mod:`pfcvr.data.duplicates`). When no
validation split remains, ``data.val_fraction`` of the training identities are moved to ``val``
(model selection never looks at test). Images are not copied: the manifest's ``file_path`` stays
relative to the images root, which prepare records in meta.json. A file whose every record fails
the same way is a layout mismatch, reported in one line (:mod:`pfcvr.data.diagnose`).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from pfcvr.data.diagnose import layout_mismatch
from pfcvr.data.duplicates import merge_duplicates
from pfcvr.data.manifest import (DataError, Problems, apply_on_error, carve_val,
                                 identity_split_problems)
from pfcvr.data.partfiles import UNKNOWN_CATEGORY, read_part_file
from pfcvr.data.sources import DEFAULT_ANNOTATIONS, SourceLayout, find_annotations, layout_of

__all__ = ["DEFAULT_ANNOTATIONS", "ReadResult", "check_image", "check_images", "read_part_file",
           "read_source"]
PARALLEL_MIN = 1000        # images checked in worker processes from this many on


@dataclass
class ReadResult:
    records: list[dict]
    images_root: Path                       # absolute; manifest file_paths are relative to it
    annotations: Path
    skipped: dict[str, int] = field(default_factory=dict)
    val_carved_ids: int = 0                 # training identities moved to val
    val_is_test: bool = False               # the source's val split became test (T2I-VeRW)
    duplicates: dict[str, int] = field(default_factory=dict)   # MergeCounts.as_dict()
    ignored_parts: dict[str, int] = field(default_factory=dict)  # unknown category -> detections


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
# Records
# ----------------------------------------------------------------------------------------------

@dataclass
class _Context:
    layout: SourceLayout
    root: Path
    problems: Problems
    unknown_category: str
    ignored: dict[int, Counter]       # source index -> unknown categories left out of its file


def _parse_parts(i: int, name: Any, boxes: Any, ctx: _Context, rec: dict) -> None:
    if not isinstance(boxes, str):
        ctx.problems.add(i, name, "bad_part_file", f"boxes {boxes!r} is not a path string")
        return
    rel = _posix(boxes)
    why = _unsafe(rel)
    ignored: Counter = Counter()
    parts = (f"boxes path {rel!r} {why}" if why else
             read_part_file(ctx.root / rel, ctx.unknown_category, ignored))
    if ignored:
        ctx.ignored[i] = ignored
    if isinstance(parts, str):
        kind = ("missing_part_file" if parts == "part file does not exist" else
                "unknown_part_category" if "unknown part category" in parts else "bad_part_file")
        ctx.problems.add(i, name, kind, f"{parts}: {ctx.root / rel}" if kind == "missing_part_file"
                         else f"{parts} ({rel})")
    else:
        rec["parts"] = parts


def _parse_record(i: int, raw: Any, ctx: _Context) -> dict | None:
    """One raw record -> canonical record (split not yet mapped), or None (problems added)."""
    problems, key = ctx.problems, ctx.layout.path_field
    if not isinstance(raw, dict):
        problems.add(i, None, "bad_record", f"record is a {type(raw).__name__}, not a mapping")
        return None
    fp = raw.get(key)
    name = fp if isinstance(fp, str) else None
    missing = [k for k in ctx.layout.fields if k not in raw]
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
        problems.add(i, name, "bad_file_path", f"{key} {fp!r} is not a non-empty string")
    else:
        fp = _posix(fp)
        if (why := _unsafe(fp)) is not None:
            problems.add(i, name, "bad_file_path", f"{key} {fp!r} {why}")
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
    boxes = raw.get("boxes") if ctx.layout.part_files else None
    if boxes not in (None, ""):
        _parse_parts(i, name, boxes, ctx, rec)
    return rec if len(problems) == bad else None


def _load_annotations(ann: Path) -> list:
    try:
        raw = json.loads(ann.read_text(encoding="utf-8-sig"))   # a BOM (Windows editors) is fine
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{ann}: not valid JSON ({err})") from None
    if not isinstance(raw, list):
        raise ValueError(f"{ann}: must be a JSON list of per-image records, got {type(raw).__name__}")
    return raw


def _map_splits(layout: SourceLayout, records: list[dict | None], problems: Problems) -> bool:
    """Check (fixed split names) or map (T2I rules) the splits in place; True when the source's
    val became test."""
    if layout.splits is not None:
        for i, rec in enumerate(records):
            if rec is not None and rec["split"] not in layout.splits:
                problems.add(i, rec["file_path"], "bad_split",
                             f"split {rec['split']!r} is not one of {', '.join(layout.splits)}")
                records[i] = None
        return False
    names = {r["split"] for r in records if r is not None}
    val_is_test = "test" not in names and any(s != "train" for s in names)
    for rec in filter(None, records):
        s = rec["split"]
        rec["split"] = s if s in ("train", "test") else ("test" if val_is_test else "val")
    return val_is_test


def read_source(source: str, root: str | Path, annotations: str = "", *, val_fraction: float,
                seed: int, on_error: str = "raise", unknown_category: str = "error",
                workers: int | None = None) -> ReadResult:
    """Read a real dataset into canonical records (see the module docstring).

    ``root``: the dataset folder; ``annotations``: the JSON file inside it ("" = the source's usual
    name). Bad records raise a DataError listing the first offenders and the total, or with
    ``on_error="skip"`` are dropped and counted in ``ReadResult.skipped`` (in images, after
    merging). A layout mismatch raises a one-line DataError whatever ``on_error`` says.
    ``unknown_category`` (``parts.unknown_category``): ``error`` makes a part file with a category
    outside the six a bad record, ``ignore`` leaves those detections out.
    """
    layout = layout_of(source)
    if unknown_category not in UNKNOWN_CATEGORY:
        raise ValueError(f"parts.unknown_category={unknown_category!r}: one of error | ignore")
    if not str(root).strip():
        raise ValueError(f"data.root is empty: set it to the {source} dataset folder "
                         f"(e.g. dvc exp run -S data.root=/path/to/dataset)")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={str(root)!r}: dataset folder not found")
    ann = find_annotations(layout, root, _posix(annotations) if annotations else "")
    raw = _load_annotations(ann)
    images_root = layout.images_root(root)
    problems = Problems(str(ann))
    ctx = _Context(layout, root, problems, unknown_category, {})
    records: list[dict | None] = [_parse_record(i, r, ctx) for i, r in enumerate(raw)]
    if layout.splits is not None:
        _map_splits(layout, records, problems)
    merged, merge_counts = merge_duplicates(records, problems)   # by the splits as written
    val_is_test = _map_splits(layout, records, problems) if layout.splits is None else False

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
    mismatch = layout_mismatch(layout, ann, raw, records, problems, merged, images_root)
    if mismatch is not None:
        raise DataError(mismatch)
    bad = problems.bad_indices()
    ignored = sum((c for i, c in ctx.ignored.items() if records[i] is not None and i not in bad),
                  Counter())                 # only the images that are kept
    kept, skipped = apply_on_error(records, problems, on_error, merged)
    if not kept:
        raise ValueError(f"{ann}: no usable records left (skipped: {skipped})")
    carved = 0
    if not any(r["split"] == "val" for r in kept):
        kept, carved = carve_val(kept, val_fraction, seed)
    for s in ("train", "test"):
        if not any(r["split"] == s for r in kept):
            raise ValueError(f"{ann}: no {s} records left (after skipping {skipped.get('total', 0)} "
                             "bad ones); the pipeline needs train and test splits")
    return ReadResult(kept, images_root, ann, skipped, carved, val_is_test,
                      merge_counts.as_dict(), dict(sorted(ignored.items())))
