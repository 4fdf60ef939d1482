"""The gallery of `pfcvr search`: a folder of images or a manifest JSON, and its fingerprint."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pfcvr.data.cachekey import file_stamp
from pfcvr.data.manifest import images_root
from pfcvr.runtime.atomic import read_json
from pfcvr.search.errors import SearchError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")


@dataclass
class Gallery:
    """Candidate images: paths, optional identity ids (manifest galleries), where they came from."""

    paths: list[Path]
    ids: list[int] | None
    source: str


def _manifest_gallery(path: Path, split: str | None) -> Gallery:
    try:
        records = read_json(path)
    except (ValueError, OSError) as err:
        raise SearchError(f"gallery manifest {err}") from None
    if not isinstance(records, list):
        raise SearchError(f"gallery manifest {path}: must be a JSON list of records")
    meta_file = path.parent / "meta.json"
    try:
        meta = read_json(meta_file) if meta_file.is_file() else {}
    except ValueError as err:
        raise SearchError(str(err)) from None
    root = images_root(path.parent, meta)
    paths, ids = [], []
    seen: dict[str, tuple[int, int]] = {}   # file_path -> (record, position): ranked once
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("file_path"), str):
            raise SearchError(f"gallery manifest {path}: record {i} has no string file_path")
        if split is not None and rec.get("split") != split:
            continue
        pid = int(rec["id"]) if isinstance(rec.get("id"), int) else -1
        fp = rec["file_path"]
        if fp in seen:              # a manifest of an older prepare (one record per caption)
            j, pos = seen[fp]
            if ids[pos] != pid:
                raise SearchError(f"gallery manifest {path}: image {fp} is record {j} and "
                                  f"record {i} with different ids; rerun the prepare stage")
            continue
        seen[fp] = (i, len(paths))
        paths.append(root / fp)
        ids.append(pid)
    if not paths:
        where = f" of split {split!r}" if split else ""
        raise SearchError(f"gallery manifest {path} has no records{where}")
    return Gallery(paths, ids, str(path))


def load_gallery(path: str | Path, split: str | None = None) -> Gallery:
    """A folder of images (recursive, sorted) or a manifest JSON (optionally one split)."""
    path = Path(path)
    if not path.exists():
        raise SearchError(f"gallery {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise SearchError(f"gallery {path}: expected a folder of images or a manifest .json")
        return _manifest_gallery(path, split)
    if split is not None:
        raise SearchError("--split only applies to a manifest gallery, not to a folder")
    paths = sorted(p for p in path.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not paths:
        raise SearchError(f"gallery folder {path} contains no images "
                          f"({', '.join(IMAGE_SUFFIXES)})")
    return Gallery(paths, None, str(path))


def gallery_fingerprint(gallery: Gallery) -> str:
    """Hash of the gallery's file list (with the ids of a manifest gallery) and each file's
    stamp (inode, size, mtime, ctime: :func:`pfcvr.data.cachekey.file_stamp`), so a file
    rewritten with its old size and mtime still changes it."""
    h = hashlib.sha256()
    for i, p in enumerate(gallery.paths):
        pid = gallery.ids[i] if gallery.ids is not None else ""
        h.update(f"{p.resolve()}|{file_stamp(p)}|{pid}\n".encode())
    return h.hexdigest()
