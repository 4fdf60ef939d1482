"""The embedded benchmark: identities, rendering, captions, determinism, and the oracle."""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pfcvr.config import load_params
from pfcvr.data import synthetic as S
from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.manifest import save_manifest, validate_records
from pfcvr.data.oracle import attribute_oracle, oracle_similarity
from pfcvr.data.synthetic import generator

ROOT = Path(__file__).resolve().parents[1]


def tiny_params(**overrides):
    base = {"data.synthetic.n_ids": 12, "data.synthetic.images_per_id": 2,
            "data.synthetic.image_size": 64, "data.synthetic.family_size": 3}
    base.update(overrides)
    return load_params(ROOT / "params.yaml", overrides=base)


def identity(**changes) -> dict:
    """One identity with chosen attributes (category.attr=value keyword names use '__')."""
    attrs = S.sample_identities(1, 1, np.random.default_rng(0))[0]
    for key, value in changes.items():
        cat, attr = key.split("__")
        attrs[cat][attr] = value
    return attrs


# ---------------------------------------------------------------------------------------------
# identities and splits
# ---------------------------------------------------------------------------------------------

def test_families_share_global_attributes_and_differ_in_parts():
    ids = S.sample_identities(50, 4, np.random.default_rng(1))
    assert len(ids) == 50 and ids[-1]["family"] == 12        # 12 families of 4 and one of 2
    fams: dict[int, list[dict]] = {}
    for a in ids:
        fams.setdefault(a["family"], []).append(a)
    for members in fams.values():
        assert len({(m["global"]["type"], m["global"]["colour"]) for m in members}) == 1
        for i, a in enumerate(members):
            for b in members[:i]:
                side = sum(a[c][k] != b[c][k] for c in S.VISIBLE_PARTS["side_left"] for k in a[c])
                end = sum(a[c][k] != b[c][k] for c in S.VISIBLE_PARTS["front"] for k in a[c])
                assert side >= S.MIN_FAMILY_DIFF and end >= S.MIN_FAMILY_DIFF
    keys = {str([a["global"], *(a[c] for c in PART_CATEGORIES)]) for a in ids}
    assert len(keys) == 50                                   # no two identities are identical
    for a in ids:
        for cat, attrs in S.PART_ATTRIBUTES.items():
            assert set(a[cat]) == set(attrs) and all(a[cat][k] in v for k, v in attrs.items())
        d = a["doors"]
        assert (d["colour"] == "none") == (d["stripe"] == "none" and d["decal"] == "none")


def test_split_families_keeps_families_whole_and_fractions():
    split = S.split_families(20, {"train": 0.6, "val": 0.15, "test": 0.25}, np.random.default_rng(0))
    assert Counter(split) == {"train": 12, "val": 3, "test": 5}
    assert Counter(S.split_families(3, {"train": 0.6, "val": 0.15, "test": 0.25},
                                    np.random.default_rng(0))) == {"train": 1, "val": 1, "test": 1}
    assert Counter(S.split_families(2, {"train": 0.5, "val": 0.25, "test": 0.25},
                                    np.random.default_rng(0))) == {"train": 1, "test": 1}
    with pytest.raises(ValueError, match="1 families are too few"):
        S.split_families(1, {"train": 0.5, "val": 0.25, "test": 0.25}, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("view", S.VIEWS)
def test_render_records_exactly_the_visible_parts(view):
    for t, vtype in enumerate(S.TYPES):
        attrs = identity(global__type=vtype)
        img, parts = S.render(attrs, view, 96, np.random.default_rng([t, 3]))
        assert img.size == (96, 96) and img.mode == "RGB"
        assert sorted(parts) == sorted(S.VISIBLE_PARTS[view]), vtype
        for cat, region in parts.items():
            x0, y0, x1, y1 = region["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert (x1 - x0) * 96 >= 3 and (y1 - y0) * 96 >= 2, (vtype, cat, region["box"])  # not specks
            if "grid" in region:
                g = np.asarray(region["grid"])
                assert g.shape == (S.PART_GRID, S.PART_GRID) and set(np.unique(g)) <= {0, 1}
                rows, cols = np.nonzero(g)
                # the grid lies inside its box (cell centres)
                assert ((cols + 0.5) / S.PART_GRID).min() >= x0 - 1e-6
                assert ((rows + 0.5) / S.PART_GRID).max() <= y1 + 1e-6


def test_multi_piece_parts_carry_a_grid_with_separate_pieces():
    _, parts = S.render(identity(global__type="sedan"), "side_left", 96, np.random.default_rng(4))
    g = np.asarray(parts["wheels"]["grid"])
    assert 0 in g.any(0)[np.nonzero(g.any(0))[0][0]: np.nonzero(g.any(0))[0][-1]]  # a gap: 2 wheels
    _, parts = S.render(identity(global__type="sedan"), "front", 96, np.random.default_rng(4))
    assert "grid" in parts["lights"] and "grid" in parts["mirrors"]
    assert "grid" not in parts["roof"] or np.asarray(parts["roof"]["grid"]).sum() > 0


@pytest.mark.parametrize("seed", range(6))
def test_boxes_sit_on_the_drawn_parts(seed):
    """Inside a part's box (or grid) the part's own colour dominates, not the body's; this holds
    under the random scale, position, rotation, lighting and clutter of each seed."""
    attrs = identity(global__type="van", global__colour="yellow", windows__tint="dark",
                     windows__shape="square", lights__colour="blue", lights__shape="square")
    img, parts = S.render(attrs, "front", 96, np.random.default_rng([seed, 9]))
    a = np.asarray(img, dtype=float)
    x0, y0, x1, y1 = (np.asarray(parts["windows"]["box"]) * 96).round().astype(int)
    window = a[y0:y1, x0:x1].reshape(-1, 3)
    assert (window.max(1) < 100).mean() > 0.6            # dark glass, not yellow paint
    # lights: the grid marks the two lamps; a lamp cell is blue (b > r), the body is yellow (r > b)
    g = np.kron(np.asarray(parts["lights"]["grid"]), np.ones((4, 4))).astype(bool)   # 24 -> 96 px
    lamps = a[g]
    assert (lamps[:, 2] > lamps[:, 0]).mean() > 0.6
    body = a[int(y1) + 1: int(y1) + 3, x0:x1].reshape(-1, 3)   # just below the windshield
    assert (body[:, 0] > body[:, 2]).mean() > 0.5


def test_side_right_mirrors_side_left_layout():
    attrs = identity(global__type="suv")
    _, left = S.render(attrs, "side_left", 96, np.random.default_rng(1))
    _, right = S.render(attrs, "side_right", 96, np.random.default_rng(1))
    # the mirror sits at the front: left part of the image facing left, right part facing right
    assert left["mirrors"]["box"][0] < left["doors"]["box"][0]
    assert right["mirrors"]["box"][2] > right["doors"]["box"][2]


# ---------------------------------------------------------------------------------------------
# captions
# ---------------------------------------------------------------------------------------------

def test_captions_state_visible_facts_with_their_phrases():
    ids = S.sample_identities(20, 4, np.random.default_rng(2))
    rng = np.random.default_rng(3)
    words = Counter()
    for i in range(400):
        attrs, view = ids[i % 20], S.VIEWS[i % 4]
        text, facts = S.describe(attrs, view, rng, error_rate=0.0)
        words.update(re.findall(r"[a-z]+", text.lower()))
        assert text[0].isupper() and text.endswith(".") and "  " not in text
        assert {f["category"] for f in facts} - {"global"} <= set(S.VISIBLE_PARTS[view])
        assert [f["attribute"] for f in facts[:2]] == ["type", "colour"]
        n_parts = len({f["category"] for f in facts} - {"global"})
        assert 2 <= n_parts <= 4
        for f in facts:
            assert f["phrase"] in text
            assert not f["mistake"]
            cat = f["category"]
            assert f["value"] == attrs[cat][f["attribute"]]     # no mistakes at rate 0
        assert 8 <= len(text.split()) <= 45
    # synonyms a witness would use
    for w in ("rims", "wheels", "lamps", "lights", "headlights", "mirrors", "windows", "roof", "doors"):
        assert words[w] > 0, w


def test_witness_mistakes_follow_the_error_rate():
    ids = S.sample_identities(8, 4, np.random.default_rng(2))
    rng = np.random.default_rng(4)
    facts = [f for i in range(600) for f in S.describe(ids[i % 8], S.VIEWS[i % 4], rng, 0.3)[1]]
    wrong = [f for f in facts if f["mistake"]]
    rate = len(wrong) / len(facts)
    assert 0.25 < rate < 0.36
    for f in wrong:  # a mistake states a value the identity does not have
        assert any(f["value"] != a[f["category"]][f["attribute"]] for a in ids)


# ---------------------------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------------------------

def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.png"))}


def test_generate_is_deterministic_and_valid(tmp_path):
    p = tiny_params()
    a = S.generate(p.data.synthetic, 3, tmp_path / "a", workers=1)
    b = S.generate(p.data.synthetic, 3, tmp_path / "b", workers=1)
    assert a == b and _digest(tmp_path / "a") == _digest(tmp_path / "b")
    save_manifest(a, tmp_path / "a.json")
    save_manifest(b, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert len(a) == 24 and len(_digest(tmp_path / "a")) == 24
    assert not validate_records(a)
    assert [r["split"] for r in a] == sorted((r["split"] for r in a), key=["train", "val", "test"].index)
    for r in a:
        assert (tmp_path / "a" / r["file_path"]).is_file()
        assert len(r["captions"]) == 2 == len(r["caption_facts"])
        assert r["view"] in S.VIEWS and set(r["parts"]) == set(S.VISIBLE_PARTS[r["view"]])
    c = S.generate(p.data.synthetic, 4, tmp_path / "c", workers=1)
    assert _digest(tmp_path / "c") != _digest(tmp_path / "a")


def test_generate_with_worker_processes_is_byte_identical(tmp_path, monkeypatch):
    # with 2 processes the output must not change: each image has its own seed
    monkeypatch.setattr(generator, "IMAGES_PER_WORKER", 8)
    p = tiny_params(**{"data.synthetic.n_ids": 8, "data.synthetic.image_size": 32})
    one = S.generate(p.data.synthetic, 0, tmp_path / "one", workers=1)
    two = S.generate(p.data.synthetic, 0, tmp_path / "two", workers=2)
    assert one == two and _digest(tmp_path / "one") == _digest(tmp_path / "two")


def test_generate_splits_are_identity_and_family_disjoint(tmp_path):
    p = tiny_params(**{"data.synthetic.n_ids": 30, "data.synthetic.images_per_id": 1})
    recs = S.generate(p.data.synthetic, 0, tmp_path, workers=1)
    split_of_family: dict[int, set] = {}
    for r in recs:
        split_of_family.setdefault(r["attributes"]["family"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of_family.values())
    # 10 families under the default split 0.8 / 0.06 / 0.14: val round(0.6) = 1, test round(1.4) = 1
    assert Counter(next(iter(s)) for s in split_of_family.values()) == {"train": 8, "val": 1, "test": 1}


def test_view_mix_is_respected(tmp_path):
    p = tiny_params(**{"data.synthetic.views": {"side_left": 0.0, "side_right": 0.0, "front": 1.0,
                                                "rear": 0.0}})
    recs = S.generate(p.data.synthetic, 0, tmp_path, workers=1)
    assert {r["view"] for r in recs} == {"front"}


# ---------------------------------------------------------------------------------------------
# the oracle
# ---------------------------------------------------------------------------------------------

def test_oracle_counts_only_visible_true_facts():
    a = identity(wheels__colour="gold", windows__tint="dark")
    b = identity(wheels__colour="red", windows__tint="dark")
    gallery = [{"split": "test", "id": 1, "attributes": a, "parts": {"wheels": {}, "windows": {}}},
               {"split": "test", "id": 2, "attributes": b, "parts": {"wheels": {}, "windows": {}}},
               {"split": "test", "id": 1, "attributes": a, "parts": {"windows": {}}}]   # wheels hidden
    q = [[{"category": "global", "attribute": "type", "value": a["global"]["type"]},
          {"category": "wheels", "attribute": "colour", "value": "gold"},
          {"category": "windows", "attribute": "tint", "value": "dark"}]]
    all_scores = oracle_similarity(gallery, q, "all")
    assert np.round(all_scores[0]).tolist() == [3, 2, 2]
    assert np.round(oracle_similarity(gallery, q, "global")[0]).tolist() == [1, 1, 1]
    assert (np.abs(all_scores - np.round(all_scores)) < 0.01).all()       # tie noise is tiny
    with pytest.raises(ValueError, match="scope='parts': one of all | global"):
        oracle_similarity(gallery, q, "parts")


def test_oracle_gap_on_a_small_benchmark():
    """Families make type + colour ambiguous; the stated part attributes resolve it."""
    ids = S.sample_identities(80, 4, np.random.default_rng(0))
    split = S.split_families(20, {"train": 0.5, "val": 0.0, "test": 0.5}, np.random.default_rng(1))
    rng = np.random.default_rng(2)
    recs = []
    for pid, a in enumerate(ids):
        for k in range(4):
            view = S.VIEWS[(pid + k) % 4]
            recs.append({"split": split[a["family"]], "id": pid, "attributes": a, "view": view,
                         "parts": {c: {} for c in S.VISIBLE_PARTS[view]},
                         "caption_facts": [S.describe(a, view, rng, 0.05)[1] for _ in range(2)]})
    m = attribute_oracle(recs, "test")
    assert set(m) == {f"oracle_{s}_{k}" for s in ("global", "all") for k in ("R1", "R5", "mAP")}
    assert m["oracle_global_R1"] < 30 and m["oracle_all_R1"] > 75
    assert m["oracle_all_mAP"] > m["oracle_global_mAP"] + 30
    assert attribute_oracle([{k: v for k, v in r.items() if k != "attributes"} for r in recs]) == {}
