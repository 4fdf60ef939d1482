"""Identities of the synthetic benchmark and their family-whole train / val / test split.

Identities come in families that share type and body colour and differ only in part attributes,
so type + colour alone cannot tell family members apart (the confusers that make parts matter).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.synthetic.vocabulary import (BODY_COLOURS, END_PARTS, GLOBAL, PART_ATTRIBUTES,
                                             SIDE_PARTS, TYPES)

MIN_FAMILY_DIFF = 2        # attributes in which two family members differ, per view group


def _sample_parts(rng: np.random.Generator) -> dict[str, dict[str, str]]:
    parts = {cat: {a: str(rng.choice(vals)) for a, vals in attrs.items()}
             for cat, attrs in PART_ATTRIBUTES.items()}
    doors = parts["doors"]
    if doors["stripe"] == "none" and doors["decal"] == "none":
        doors["colour"] = "none"
    elif doors["colour"] == "none":
        doors["colour"] = str(rng.choice(PART_ATTRIBUTES["doors"]["colour"][1:]))
    return parts


def _n_differences(a: dict, b: dict, categories: Sequence[str]) -> int:
    return sum(a[c][k] != b[c][k] for c in categories for k in a[c])


def identity_key(attrs: dict) -> tuple:
    """The full attribute set of an identity: (type, colour, every part attribute value)."""
    return (attrs[GLOBAL]["type"], attrs[GLOBAL]["colour"],
            tuple(v for c in PART_CATEGORIES for v in attrs[c].values()))


def sample_identities(n_ids: int, family_size: int, rng: np.random.Generator) -> list[dict]:
    """Attributes of ``n_ids`` identities in families of ``family_size`` (the last may be smaller).

    Returns dicts ``{"family": int, "global": {"type", "colour"}, <category>: {attr: value}}``.
    Family members share type and colour; any two differ in >= MIN_FAMILY_DIFF part attributes
    visible from the side and as many visible from the front/rear, and no two identities of the
    whole set are identical.
    """
    out: list[dict] = []
    seen: set[tuple] = set()
    for family in range(math.ceil(n_ids / family_size)):
        glob = {"type": str(rng.choice(TYPES)), "colour": str(rng.choice(BODY_COLOURS))}
        members: list[dict] = []
        for _ in range(min(family_size, n_ids - family * family_size)):
            for _attempt in range(1000):
                parts = _sample_parts(rng)
                key = identity_key({GLOBAL: glob, **parts})
                if key not in seen and all(
                        _n_differences(parts, m, SIDE_PARTS) >= MIN_FAMILY_DIFF
                        and _n_differences(parts, m, END_PARTS) >= MIN_FAMILY_DIFF
                        for m in members):
                    break
            else:  # cannot happen with the vocabulary above unless families are huge
                raise ValueError(f"data.synthetic.family_size={family_size}: cannot sample that many "
                                 "distinguishable family members")
            seen.add(key)
            members.append(parts)
            out.append({"family": family, GLOBAL: dict(glob), **parts})
    return out


def split_families(n_families: int, fractions: dict[str, float],
                   rng: np.random.Generator) -> list[str]:
    """Split name per family: whole families go to one split, so the test set keeps its confusers.

    ``fractions``: {"train", "val", "test"} summing to 1. Train and test get at least one family,
    val at least one when its fraction is positive and there are three families or more.
    """
    counts = {s: int(round(fractions[s] * n_families)) for s in ("val", "test")}
    if fractions["val"] > 0 and n_families >= 3:
        counts["val"] = max(counts["val"], 1)
    counts["test"] = max(counts["test"], 1)
    counts["train"] = n_families - counts["val"] - counts["test"]
    if counts["train"] < 1:
        raise ValueError(f"data.synthetic: {n_families} families are too few for the split "
                         f"{fractions} (need at least one train and one test family); raise n_ids "
                         "or lower family_size")
    names = ["train"] * counts["train"] + ["val"] * counts["val"] + ["test"] * counts["test"]
    return [names[i] for i in rng.permutation(n_families)]

