"""The canonical manifest (``data/prepared/manifest.json``): load, save, validate, split checks.

A manifest is a JSON list of records ``{split, id, file_path, captions, parts?, view?, ...}``
(docs/data.md, "The prepare stage"). Bad records are collected in a :class:`Problems` list and reported
together: the first few offenders by record index and file path, plus the total, so one run shows
the size of the damage instead of stopping at the first bad line.
"""
from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.runtime.atomic import atomic_path, read_json

SPLITS = ("train", "val", "test")
SHOW = 5                   # offenders listed in an error message


class DataError(ValueError):
    """The input data is bad (records listed in the message)."""


@dataclass
class Problem:
    index: int             # record index in the source file (-1: not tied to one record)
    file_path: str
    kind: str              # short machine name, e.g. missing_image, empty_caption
    message: str


@dataclass
class Problems:
    """Bad records found in ``source`` (a file name or a description)."""

    source: str
    items: list[Problem] = field(default_factory=list)

    def add(self, index: int, file_path: Any, kind: str, message: str) -> None:
        self.items.append(Problem(index, str(file_path) if file_path is not None else "?", kind, message))

    def extend(self, other: "Problems") -> None:
        self.items += other.items

    def __len__(self) -> int:
        return len(self.items)

    def bad_indices(self) -> set[int]:
        return {p.index for p in self.items if p.index >= 0}

    def counts(self) -> dict[str, int]:
        """Bad records per problem kind (a record counts once per kind)."""
        seen = {(p.kind, p.index) for p in self.items}
        return dict(sorted(Counter(kind for kind, _ in seen).items()))

    def message(self, hint: str = "") -> str:
        n_rec = len({p.index for p in self.items})
        lines = [f"{self.source}: {n_rec} bad record(s), {len(self.items)} problem(s)"
                 f"{'; ' + hint if hint else ''}. First {min(SHOW, len(self.items))}:"]
        for p in sorted(self.items, key=lambda p: p.index)[:SHOW]:
            where = f"record {p.index}" if p.index >= 0 else "file"
            lines.append(f"  {where} ({p.file_path}): {p.message}")
        if len(self.items) > SHOW:
            lines.append(f"  ... and {len(self.items) - SHOW} more problem(s) "
                         f"({', '.join(f'{k}: {n}' for k, n in self.counts().items())})")
        return "\n".join(lines)

    def raise_if_any(self, hint: str = "") -> None:
        if self.items:
            raise DataError(self.message(hint))


def apply_on_error(records: list[dict | None], problems: Problems, on_error: str,
                   merged: Iterable[int] = ()) -> tuple[list[dict], dict[str, int]]:
    """``raise``: raise DataError listing the problems. ``skip``: drop the bad records.

    ``records[i]`` must be the record of source index ``i``; entries that are None (records that
    could not even be parsed) are dropped too, except the indices in ``merged`` (records folded
    into another record of the same image, not failures). Returns (kept records, skipped counts
    per kind plus ``total``). When no record would be left, the error does not suggest ``skip``.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error={on_error!r}: one of raise | skip")
    merged = set(merged)
    bad = problems.bad_indices()
    kept = [r for i, r in enumerate(records) if i not in bad and r is not None]
    if on_error == "raise":
        hint = ("set data.on_error: skip to drop bad records" if kept else
                "no record is usable, so data.on_error: skip would drop every one: check that "
                "data.source, data.root and data.annotations match the files")
        problems.raise_if_any(hint)
    skipped = problems.counts()
    skipped["total"] = len(records) - len(merged) - len(kept)
    return kept, skipped


# ----------------------------------------------------------------------------------------------
# Validation of canonical records
# ----------------------------------------------------------------------------------------------

def _box_problem(box: Any) -> str | None:
    if not (isinstance(box, (list, tuple)) and len(box) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        return f"box {box!r} is not [x0, y0, x1, y1]"
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        return f"box {list(box)} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1"
    return None


def record_problems(rec: Any) -> list[tuple[str, str]]:
    """(kind, message) of everything wrong with one canonical record (empty list = valid)."""
    if not isinstance(rec, dict):
        return [("bad_record", f"record is a {type(rec).__name__}, not a mapping")]
    out = []
    missing = [k for k in ("split", "id", "file_path", "captions") if k not in rec]
    if missing:
        out.append(("missing_field", f"missing required field(s) {', '.join(missing)}"))
    if "split" in rec and rec["split"] not in SPLITS:
        out.append(("bad_split", f"split {rec['split']!r} is not one of {', '.join(SPLITS)}"))
    if "id" in rec and (isinstance(rec["id"], bool) or not isinstance(rec["id"], int)):
        out.append(("bad_id", f"id {rec['id']!r} is not an integer"))
    if "file_path" in rec and (not isinstance(rec["file_path"], str) or not rec["file_path"].strip()):
        out.append(("bad_file_path", f"file_path {rec['file_path']!r} is not a non-empty string"))
    if "captions" in rec:
        caps = rec["captions"]
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            out.append(("bad_captions", "captions must be a list of strings"))
        elif not caps or any(not c.strip() for c in caps):
            out.append(("empty_caption", "no captions" if not caps else
                        f"caption {[i for i, c in enumerate(caps) if not c.strip()][0]} is empty"))
    parts = rec.get("parts")
    if parts is not None:
        if not isinstance(parts, dict):
            out.append(("bad_parts", "parts must be a mapping category -> {box, grid?}"))
        else:
            for cat, region in parts.items():
                if cat not in PART_CATEGORIES:
                    out.append(("unknown_part_category",
                                f"unknown part category {cat!r} (known: {', '.join(PART_CATEGORIES)})"))
                elif not isinstance(region, dict) or "box" not in region:
                    out.append(("bad_parts", f"parts.{cat} must be a mapping with a box"))
                elif (msg := _box_problem(region["box"])) is not None:
                    out.append(("bad_parts", f"parts.{cat}: {msg}"))
    return out


def validate_records(records: list, source: str = "manifest") -> Problems:
    """Field-level checks of canonical records plus identity-disjoint splits."""
    problems = Problems(source)
    for i, rec in enumerate(records):
        for kind, msg in record_problems(rec):
            problems.add(i, rec.get("file_path") if isinstance(rec, dict) else None, kind, msg)
    good = [(i, r) for i, r in enumerate(records) if i not in problems.bad_indices()]
    problems.extend(identity_split_problems(good, source))
    problems.extend(duplicate_image_problems(good, source))
    return problems


def duplicate_image_problems(indexed: Iterable[tuple[int, dict]], source: str = "manifest"
                             ) -> Problems:
    """Every record whose ``file_path`` another record lists too (an image counted twice).

    Prepare merges such records (pfcvr.data.duplicates); a manifest that still has them was
    written by hand or by an older prepare: rerun it.
    """
    first: dict[str, int] = {}
    problems = Problems(source)
    for i, rec in indexed:
        fp = rec.get("file_path")
        if fp in first:
            problems.add(i, fp, "duplicate_image",
                         f"image {fp} is also record {first[fp]}: one record per image (rerun "
                         "the prepare stage, which merges the captions of such records)")
        else:
            first[fp] = i
    return problems


def identity_split_problems(indexed: Iterable[tuple[int, dict]], source: str = "manifest") -> Problems:
    """Every record of an identity that appears in more than one split.

    ``indexed``: (source index, record with ``split`` and ``id``).
    """
    indexed = list(indexed)
    splits: dict[int, Counter] = defaultdict(Counter)
    for _, rec in indexed:
        splits[rec["id"]][rec["split"]] += 1
    problems = Problems(source)
    for i, rec in indexed:
        where = splits[rec["id"]]
        if len(where) > 1:
            desc = " and ".join(f"{s} ({n} record{'s' * (n > 1)})" for s, n in sorted(where.items()))
            problems.add(i, rec.get("file_path"), "id_in_two_splits",
                         f"identity {rec['id']} appears in {desc}; splits must be identity-disjoint")
    return problems


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------

def carve_val(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], int]:
    """Move ``round(fraction * n)`` of the ``n`` training identities (>= 1 when fraction > 0 and
    n >= 2) with all their records to ``val``. Deterministic from ``seed``; records keep their
    order. Returns (records, number of identities moved)."""
    train_ids = sorted({r["id"] for r in records if r["split"] == "train"})
    n = int(round(fraction * len(train_ids)))
    if fraction > 0 and len(train_ids) >= 2:
        n = max(n, 1)
    n = min(n, len(train_ids) - 1) if train_ids else 0
    if n <= 0:
        return records, 0
    order = np.random.default_rng([seed, 7]).permutation(len(train_ids))
    moved = {train_ids[i] for i in order[:n]}
    out = [dict(r, split="val") if r["split"] == "train" and r["id"] in moved else r for r in records]
    return out, n


def split_summary(records: list[dict]) -> dict[str, dict[str, int]]:
    """``{split: {ids, images, captions}}`` for the three splits."""
    out = {}
    for s in SPLITS:
        recs = [r for r in records if r["split"] == s]
        out[s] = {"ids": len({r["id"] for r in recs}), "images": len(recs),
                  "captions": sum(len(r["captions"]) for r in recs)}
    return out


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def save_manifest(records: list[dict], path: str | Path) -> None:
    """Write atomically, one compact record per line (deterministic bytes, readable diffs)."""
    body = ",\n".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False) for r in records)
    with atomic_path(path) as tmp:
        tmp.write_text("[\n" + body + "\n]\n" if records else "[]\n", encoding="utf-8")


def load_manifest(path: str | Path, validate: bool = True) -> list[dict]:
    """Read a manifest; with ``validate`` raise DataError listing its bad records."""
    records = read_json(path)
    if not isinstance(records, list):
        raise DataError(f"{path}: must be a JSON list of records, got {type(records).__name__}")
    if validate:
        validate_records(records, str(path)).raise_if_any()
    return records


def stored_location(path: str | Path, prepared_dir: str | Path,
                    project: str | Path | None = None) -> str:
    """How ``meta.json`` records a dataset folder or file that stays where it is (a real
    dataset is read in place): relative to ``prepared_dir`` (POSIX separators, e.g.
    ``../../datasets/T2I/image``) when it and ``prepared_dir`` both lie in ``project`` (default:
    the working directory, where DVC runs the stages: the repository root), so a moved or copied
    project keeps its prepared data valid; else absolute, since a dataset outside the project
    stays put when the project moves. Symbolic links are resolved first (a link inside the
    project to another disk is recorded by its target). Read back by :func:`images_root`.
    """
    project = Path(project if project is not None else Path.cwd()).resolve()
    target, base = Path(path).resolve(), Path(prepared_dir).resolve()
    if target.is_relative_to(project) and base.is_relative_to(project):
        return Path(os.path.relpath(target, base)).as_posix()
    return str(target)


def images_root(prepared_dir: str | Path, meta: dict) -> Path:
    """The folder that manifest ``file_path``s are relative to, from ``meta.json``.

    ``meta["images_root"]`` is absolute (a dataset outside the project), or relative to
    ``prepared_dir``: the synthetic ``images/``, or a dataset inside the project
    (:func:`stored_location`); missing or empty means ``images``. Raises :class:`DataError` when
    a recorded folder does not exist (the dataset moved or was deleted after prepare).
    """
    recorded = str(meta.get("images_root") or "")
    root = Path(recorded or "images").expanduser()
    if not root.is_absolute():
        if ".." in root.parts:   # computed from the physical prepared folder: resolve from it
            root = Path(os.path.normpath(Path(prepared_dir).resolve() / root))
        else:
            root = Path(prepared_dir) / root
    if recorded and not root.is_dir():
        raise DataError(f"{Path(prepared_dir) / 'meta.json'}: the images folder {root} (its "
                        f"images_root {recorded!r}) does not exist: the dataset was moved or "
                        "deleted after the prepare stage; set data.root to where it is now and "
                        "rerun prepare (`dvc repro prepare`, `-f` if data.root is unchanged)")
    return root


def record_name(index: int, record: dict) -> str:
    """How error messages name a manifest record: its index and file path."""
    return f"manifest record {index} (file_path {record.get('file_path')!r})"
