"""When every record of an annotation file fails the same way, say what layout was expected.

Dropping bad records (``data.on_error: skip``) is right for a few broken ones; when *every* record
fails with the same problem the file does not have the layout that ``data.source`` reads (another
dataset's field names, image paths with or without a folder prefix, other split names), and skip
would drop everything. :func:`layout_mismatch` names the field, prefix or split that was expected
in one line.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

from pfcvr.data.manifest import Problems
from pfcvr.data.sources import LAYOUTS, SourceLayout

# Field names that other layouts use for our required fields.
ALIASES = {
    "file_path": ("img_path", "image_path", "image", "file_name", "filename", "path", "img"),
    "img_path": ("file_path", "image_path", "image", "file_name", "filename", "path", "img"),
    "captions": ("caption", "sentences", "texts", "descriptions", "text"),
    "id": ("pid", "person_id", "image_id", "identity", "vid"),
    "split": ("subset", "set"),
}
PROBE = 20                         # records whose images are looked for under other prefixes
# Order of preference when several problem kinds are shared by every record.
ORDER = ("missing_field", "bad_record", "bad_file_path", "bad_split", "bad_id", "bad_captions",
         "empty_caption", "missing_image", "corrupt_image", "missing_part_file",
         "unknown_part_category", "bad_part_file")


def _shared_kind(problems: Problems, indices: set[int]) -> str | None:
    kinds: dict[int, set[str]] = defaultdict(set)
    for p in problems.items:
        kinds[p.index].add(p.kind)
    common = set.intersection(*(kinds.get(i, set()) for i in indices)) if indices else set()
    ranked = [k for k in ORDER if k in common] + sorted(common - set(ORDER))
    return ranked[0] if ranked else None


def _fields(layout: SourceLayout, raw: list[Any]) -> str:
    dicts = [r for r in raw if isinstance(r, dict)]
    have: Counter = Counter(k for r in dicts for k in r)
    missing = [f for f in layout.fields if not any(f in r for r in dicts)]
    if not missing:
        return ""
    field = missing[0]
    present = sorted(k for k in have if have[k] == len(dicts))
    alias = next((a for a in ALIASES.get(field, ()) if a in have), None)
    line = (f"no record has the field {field!r} that data.source={layout.name} reads "
            f"({layout.describe()}); the records have {', '.join(present) or 'no common fields'}")
    matches = [s for s, lay in LAYOUTS.items()
               if s != layout.name and all(f in have for f in lay.fields)]
    if matches:
        line += f": this is the layout of data.source={' or '.join(matches)}"
    elif alias:
        line += f" ({alias!r} instead of {field!r}?)"
    return line


def _prefix(layout: SourceLayout, records: list[dict], images_root: Path) -> str:
    paths = [PurePosixPath(r["file_path"]) for r in records[:PROBE]]
    first = paths[0].parts[0] if paths and len(paths[0].parts) > 1 else None
    if first and all(p.parts[0] == first and (images_root.joinpath(*p.parts[1:])).is_file()
                     for p in paths):
        return (f"the {layout.path_field} values start with {first + '/'!r}, but they are read "
                f"relative to {images_root}, which is that folder already; expected paths "
                f"without the {first + '/'!r} prefix (e.g. {PurePosixPath(*paths[0].parts[1:])})")
    try:
        subdirs = sorted(d.name for d in images_root.iterdir() if d.is_dir())[:50]
    except OSError:
        subdirs = []
    for sub in subdirs:
        if all((images_root / sub / p).is_file() for p in paths):
            return (f"the images are under {images_root / sub}: expected {layout.path_field} "
                    f"values that start with {sub + '/'!r} (e.g. {sub}/{paths[0]}), or data.root "
                    f"set to {images_root / sub}")
    return (f"none of the images exists under {images_root} (e.g. {images_root / paths[0]}); "
            f"check data.root and the {layout.path_field} values")


def layout_mismatch(layout: SourceLayout, ann: Path, raw: list[Any], records: list[dict | None],
                    problems: Problems, merged: set[int], images_root: Path) -> str | None:
    """One line naming the expected layout when every record fails the same way, else None.

    ``records[i]``: parsed record of source index ``i`` or None; ``merged``: indices folded into
    another record (not failures).
    """
    considered = set(range(len(raw))) - merged
    bad = problems.bad_indices() | {i for i in considered if records[i] is None}
    if not considered or not considered <= bad:
        return None
    kind = _shared_kind(problems, considered)
    if kind is None:
        return None
    n = len(considered)
    if kind == "missing_field" and (what := _fields(layout, raw)):
        pass
    elif kind == "missing_image":
        what = _prefix(layout, [r for r in records if r is not None], images_root)
    elif kind == "bad_split":
        names = Counter(str(r.get("split")) for r in raw if isinstance(r, dict))
        what = (f"the file's splits are {', '.join(sorted(names))}; data.source={layout.name} "
                f"expects {', '.join(layout.splits or ('train', 'test'))}")
    elif kind == "unknown_part_category":
        what = ("every part file has a category outside the six; set parts.unknown_category: "
                "ignore to leave those detections out and keep the known parts")
    else:
        first = min((p for p in problems.items if p.kind == kind), key=lambda p: p.index)
        what = (f"e.g. record {first.index} ({first.file_path}): {first.message}; "
                f"data.source={layout.name} reads {layout.describe()}")
    return (f"{ann}: layout mismatch: all {n} records fail the same way ({kind}): {what}. "
            "data.on_error: skip would drop every record")
