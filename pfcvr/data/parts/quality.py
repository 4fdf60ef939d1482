"""Caption part phrases and how good the part pairs are, measured where ground truth exists.

- :func:`caption_phrases`: per caption ``{category: [phrase, ...]}`` from the lexicon;
- :func:`assignment_quality`: precision / recall of those phrases against the synthetic
  benchmark's ``caption_facts``;
- :func:`agreement_with_annotations`: box IoU of a non-annotation source with the data's boxes.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.lexicon import assign_phrases, words
from pfcvr.data.manifest import record_name
from pfcvr.data.parts.regions import BadRegion, PartsError, annotation_region

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
            except BadRegion:
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
