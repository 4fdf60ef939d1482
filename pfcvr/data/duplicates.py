"""Records of one image listed several times (one record per caption) merged into one.

Annotation files written for text-based person search code (APTM, TBPS-CLIP, RaSa) often hold one
record per caption, so an image appears once per caption. Counted as separate images they double
the gallery (each image ranked twice changes mAP and mINP) and the image count.

Rules (:func:`merge_duplicates`), by the image path as normalised by the reader:

- same file, same id and same split: one record; its captions are those of the records in file
  order, an exact repeat of a caption (after whitespace is collapsed) dropped, because it would be
  the same query twice in evaluation and the same pair twice per training epoch. Repeats inside
  one record are dropped by the same rule. Part regions must agree (or be absent from some);
- same file under two ids or two splits: every record of that file is bad, naming the file and the
  first two records that disagree (like an identity in two splits, nothing decides which is right).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from pfcvr.data.manifest import Problems


@dataclass
class MergeCounts:
    """What :func:`merge_duplicates` did: records folded into an earlier one, images with more
    than one record, captions dropped as exact repeats."""

    records_merged: int = 0
    images_merged: int = 0
    captions_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"records_merged": self.records_merged, "images_merged": self.images_merged,
                "captions_dropped": self.captions_dropped}


def _unique(captions: list[str]) -> list[str]:
    return list(dict.fromkeys(captions))


def _where(i: int, rec: dict) -> str:
    return f"record {i} (id {rec['id']}, split {rec['split']})"


def merge_duplicates(records: list[dict | None], problems: Problems) -> tuple[set[int], MergeCounts]:
    """Merge records of the same image in place (see the module docstring).

    ``records[i]``: the parsed record of source index ``i`` (None: unusable), with ``split`` as
    written in the file. The first record of an image keeps the merged captions; the others become
    None and their indices are returned (they are merged, not skipped). Conflicts are added to
    ``problems`` as ``image_in_two_ids`` / ``image_in_two_splits``.
    """
    by_file: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        if rec is not None:
            by_file[rec["file_path"]].append(i)
    counts = MergeCounts()
    merged: set[int] = set()
    for fp, idx in by_file.items():
        first = records[idx[0]]
        if len(idx) > 1:
            other = next((j for j in idx[1:] if (records[j]["id"], records[j]["split"])
                          != (first["id"], first["split"])), None)
            if other is not None:
                two = records[other]
                kind, what = (("image_in_two_ids", "two identities") if two["id"] != first["id"]
                              else ("image_in_two_splits", "two splits"))
                for j in idx:
                    problems.add(j, fp, kind, f"image {fp} is listed under {what}: "
                                 f"{_where(idx[0], first)} and {_where(other, two)}; an image "
                                 "has one identity and one split")
                continue
            parts = [records[j].get("parts") for j in idx if records[j].get("parts") is not None]
            if any(p != parts[0] for p in parts[1:]):
                for j in idx:
                    problems.add(j, fp, "image_parts_differ", f"image {fp} is listed {len(idx)} "
                                 "times with different part regions (boxes files)")
                continue
            if parts:
                first["parts"] = parts[0]
            first["captions"] = [c for j in idx for c in records[j]["captions"]]
            for j in idx[1:]:
                records[j] = None
                merged.add(j)
            counts.records_merged += len(idx) - 1
            counts.images_merged += 1
        unique = _unique(first["captions"])
        counts.captions_dropped += len(first["captions"]) - len(unique)
        first["captions"] = unique
    return merged, counts
