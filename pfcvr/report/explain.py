"""Why each image of the top-k figure was retrieved: a caption's stated facts against the image.

On the synthetic benchmark every caption carries the facts it states (``caption_facts``) and every
image its true attributes and visible parts, so each retrieved image can say how many of the stated
facts it matches and which it contradicts (:func:`topk_figure_items`; drawn by
:func:`pfcvr.report.figures.evaluation.topk_figure`). Real datasets have no such ground truth:
their items carry no explanation.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from pfcvr.engine.evaluate import TopkItem


_EXPLAIN_LINES = 3          # at most this many "why" lines under one retrieved image


def _fact_name(fact: Mapping) -> str:
    """``type`` / ``colour`` for a global fact, ``<part> <attribute>`` for a part fact."""
    cat, attr = fact["category"], fact["attribute"]
    return attr if cat == "global" else f"{cat} {attr}"


def _explain_facts(facts: Sequence[Mapping], record: Mapping) -> tuple[int, list[str]]:
    """How a caption's stated facts fare against one gallery record's visible truth.

    ``facts``: one caption's ``caption_facts`` ({category, attribute, value, ...}); ``record``: a
    manifest record with ``attributes`` ({"global": {type, colour}, <part>: {attr: value}}) and
    ``parts`` (the part categories visible in that image). The visibility rule is the attribute
    oracle's (:mod:`pfcvr.data.oracle`): a global fact is always visible, a part fact only when
    the image shows that part. Returns ``(n_matched, lines)``: the number of facts visible and
    true, and at most :data:`_EXPLAIN_LINES` short lines, mismatches first
    (``"✗ roof type: rack≠plain"``, stated value ≠ true value), then the stated parts the image
    does not show (``"? wheels (not visible)"``), the last line saying ``"… +N more"`` when
    more would not fit.
    """
    from pfcvr.data.oracle import visible_categories

    visible = visible_categories(record)
    truth = record.get("attributes") or {}
    matched, wrong, hidden = 0, [], []
    for f in facts:
        cat = f["category"]
        if cat not in visible:
            if cat not in hidden:
                hidden.append(cat)
            continue
        true = (truth.get(cat) or {}).get(f["attribute"])
        if true is not None and str(true) == str(f["value"]):
            matched += 1
        else:
            said = f"{f['value']}\u2260{'?' if true is None else true}"
            wrong.append(f"\u2717 {_fact_name(f)}: {said}")
    lines = wrong + ([f"? {', '.join(hidden)} (not visible)"] if hidden else [])
    if len(lines) > _EXPLAIN_LINES:
        rest = len(wrong) - (_EXPLAIN_LINES - 1) + (1 if hidden else 0)
        lines = lines[:_EXPLAIN_LINES - 1] + [f"\u2026 +{rest} more"]
    return matched, lines


def _query_facts(split_data, t: TopkItem) -> list[dict] | None:
    """The ``caption_facts`` of the caption ``t`` queries with (query index = position in
    ``split_data.captions()``: records in order, captions in order), or None without them."""
    rec = split_data.records[t.image_index]
    facts, captions = rec.get("caption_facts"), rec.get("captions") or []
    if not isinstance(facts, list) or len(facts) != len(captions):
        return None
    first = sum(len(r.get("captions") or []) for r in split_data.records[:t.image_index])
    i = t.query - first
    if not 0 <= i < len(captions) or captions[i] != t.caption:
        return None
    return facts[i]


def topk_figure_items(topk: Sequence[TopkItem], split_data, size: int = 128) -> list[dict]:
    """Items for :func:`pfcvr.report.figures.evaluation.topk_figure`: the query text, the image it describes and its
    ranked gallery images (uint8 [size, size, 3]), with correctness and scores.

    Each item: ``{caption: str, target: uint8 [size, size, 3], images: [uint8 [size, size, 3]]
    (rank order), correct: [bool], scores: [float], label: "vehicle id <pid>"}``. When the split
    has the synthetic ground truth (the query record's ``caption_facts`` and the gallery records'
    ``attributes`` / ``parts``), the item also explains each image against the caption's stated
    facts (:func:`_explain_facts`):

    - ``n_facts``: int, the number of facts the caption states;
    - ``n_matched``: [int] per retrieved image, facts visible and true in it;
    - ``explain``: [[str]] per retrieved image, its mismatch / not-visible lines;
    - ``target_matched`` / ``target_explain``: the same for the described image (its mismatches
      are the witness's mistakes).

    Without ground truth (real datasets) these keys are absent and the labels stay as they were.
    """
    from PIL import Image

    paths, records = split_data.paths, split_data.records

    def load(i: int) -> np.ndarray:
        with Image.open(paths[i]) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))

    items = []
    for t in topk:
        item = {"caption": t.caption, "target": load(t.image_index),
                "images": [load(j) for j in t.gallery], "correct": t.correct,
                "scores": t.scores, "label": f"vehicle id {t.pid}"}
        facts = _query_facts(split_data, t)
        shown = [t.image_index, *t.gallery]
        if facts is not None and all("attributes" in records[j] for j in shown):
            (target_matched, target_explain), *ranked = [_explain_facts(facts, records[j])
                                                         for j in shown]
            item.update(n_facts=len(facts), n_matched=[m for m, _ in ranked],
                        explain=[lines for _, lines in ranked],
                        target_matched=target_matched, target_explain=target_explain)
        items.append(item)
    return items
