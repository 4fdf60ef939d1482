"""The attribute oracle: how much of the embedded benchmark do the part attributes decide?

How it calibrates the embedded benchmark: docs/data.md, "The attribute oracle". For every test
caption (query) and test image (gallery), the oracle's score is the number of attributes the
caption states (its ``caption_facts``) that are *visible and true* in the image: a global fact
(type, colour) is always visible; a part fact only when the image shows that part (it has a box
in ``parts``). Ties are broken by a deterministic tiny noise. Rank-1 / mAP then come from the
project's metric (:func:`pfcvr.engine.ranking.retrieval_metrics`), on the same protocol as the models.

- scope ``global``: only type and colour; low when identities collide on them (families);
- scope ``all``: every stated attribute; high when captions name enough distinguishing parts.

The gap between the two is the room a part-aware model can win.
"""
from __future__ import annotations

import numpy as np

from pfcvr.data.categories import PART_CATEGORIES

GLOBAL = "global"
TIE_NOISE = 1e-3           # << 1, the score step


def _slots(records: list[dict], queries: list[list[dict]]) -> dict[tuple[str, str, str], int]:
    """One column per (category, attribute, value) seen in the truth or in the stated facts."""
    keys = set()
    for rec in records:
        for cat in (GLOBAL, *PART_CATEGORIES):
            for attr, value in (rec["attributes"].get(cat) or {}).items():
                keys.add((cat, attr, str(value)))
    for facts in queries:
        keys.update((f["category"], f["attribute"], str(f["value"])) for f in facts)
    return {k: j for j, k in enumerate(sorted(keys))}


def visible_categories(record: dict) -> set[str]:
    """What a witness can check in one image: the global attributes (type, colour) and the part
    categories the record's ``parts`` say are visible in it."""
    return {GLOBAL, *(record.get("parts") or {})}


def oracle_similarity(gallery: list[dict], queries: list[list[dict]], scope: str = "all",
                      seed: int = 0) -> np.ndarray:
    """Oracle scores float32 [Nq, Ng].

    ``gallery``: records with ``attributes`` and ``parts``; ``queries``: the facts of each query
    caption. ``scope``: ``all`` or ``global``.
    """
    if scope not in ("all", "global"):
        raise ValueError(f"scope={scope!r}: one of all | global")
    cols = _slots(gallery, queries)
    g = np.zeros((len(gallery), len(cols)), dtype=np.float32)
    for i, rec in enumerate(gallery):
        visible = visible_categories(rec)
        for cat in visible:
            for attr, value in (rec["attributes"].get(cat) or {}).items():
                g[i, cols[(cat, attr, str(value))]] = 1.0
    q = np.zeros((len(queries), len(cols)), dtype=np.float32)
    for i, facts in enumerate(queries):
        for f in facts:
            if scope == "all" or f["category"] == GLOBAL:
                q[i, cols[(f["category"], f["attribute"], str(f["value"]))]] = 1.0
    noise = np.random.default_rng([seed, 11]).random((len(queries), len(gallery)), dtype=np.float32)
    return q @ g.T + np.float32(TIE_NOISE) * noise


def has_ground_truth(records: list[dict]) -> bool:
    return bool(records) and all("attributes" in r and "caption_facts" in r for r in records)


def attribute_oracle(records: list[dict], split: str = "test", seed: int = 0) -> dict[str, float]:
    """Oracle Rank-1 / mAP of ``split`` for both scopes, as ``{oracle_<scope>_<R1|R5|mAP>}``.

    Needs the synthetic ground truth (``attributes``, ``caption_facts``); {} without it.
    """
    from pfcvr.engine.ranking import retrieval_metrics  # torch: imported only when needed

    gallery = [r for r in records if r["split"] == split]
    if not gallery or not has_ground_truth(gallery):
        return {}
    queries = [facts for r in gallery for facts in r["caption_facts"]]
    q_ids = np.array([r["id"] for r in gallery for _ in r["caption_facts"]])
    g_ids = np.array([r["id"] for r in gallery])
    out = {}
    for scope in ("global", "all"):
        m = retrieval_metrics(oracle_similarity(gallery, queries, scope, seed), q_ids, g_ids, ks=(1, 5))
        out.update({f"oracle_{scope}_{k}": round(m[k], 2) for k in ("R1", "R5", "mAP")})
    return out
