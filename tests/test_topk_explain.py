"""The top-k figure explains each retrieved image against the caption's stated facts (synthetic
ground truth), and keeps today's labels without ground truth."""
from __future__ import annotations

import copy
import dataclasses

import pytest

from pfcvr.config import load_params
from pfcvr.data.dataset import load_split
from pfcvr.engine.evaluate import TopkItem
from pfcvr.report.explain import _EXPLAIN_LINES, _explain_facts, topk_figure_items
from pfcvr.report.figures.evaluation import topk_figure
from tests.support.eval_helpers import make_split_data, write_params

PLAIN_KEYS = {"caption", "target", "images", "correct", "scores", "label"}


def _fact(cat, attr, value):
    return {"category": cat, "attribute": attr, "value": value, "phrase": "", "mistake": False}


# What the hand-checked caption states: 5 facts.
FACTS = [_fact("global", "type", "sedan"), _fact("global", "colour", "red"),
         _fact("roof", "type", "rack"), _fact("wheels", "colour", "gold"),
         _fact("windows", "tint", "dark")]
TRUTH = {"family": 0, "global": {"type": "sedan", "colour": "red"},
         "windows": {"tint": "dark", "shape": "square"},
         "lights": {"shape": "round", "colour": "white"},
         "wheels": {"style": "solid", "colour": "silver"}, "mirrors": {"colour": "black"},
         "roof": {"type": "plain", "colour": "black"},
         "doors": {"count": "four", "stripe": "none", "decal": "none", "colour": "none"}}
BOX = {"box": [0.1, 0.1, 0.9, 0.9]}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    root = tmp_path_factory.mktemp("topk_explain")
    params = load_params(write_params(root / "params.yaml", {}), variant="full")
    prepared, parts = make_split_data(root, params)
    return load_split(prepared, parts, "train")


def _query(split, record: int, caption: int) -> int:
    """Index of caption ``caption`` of record ``record`` in ``split.captions()`` order."""
    return sum(len(r["captions"]) for r in split.records[:record]) + caption


def _hand_split(split):
    """The split with record 1's caption 1 stating FACTS, records 2 / 3 seen from the front (no
    wheels) / the side (wheels) of a vehicle with a plain roof and silver wheels, and records 1
    and 4 the side of one with every stated fact true."""
    records = copy.deepcopy(split.records)
    records[1]["caption_facts"][1] = copy.deepcopy(FACTS)
    records[2].update(attributes=copy.deepcopy(TRUTH),
                      parts={c: BOX for c in ("windows", "lights", "mirrors", "roof")})
    records[3].update(attributes=copy.deepcopy(TRUTH),
                      parts={c: BOX for c in ("windows", "wheels", "mirrors", "roof", "doors")})
    truth = copy.deepcopy(TRUTH)
    truth["roof"]["type"], truth["wheels"]["colour"] = "rack", "gold"
    for i in (1, 4):
        records[i].update(attributes=copy.deepcopy(truth), parts=dict(records[3]["parts"]))
    return dataclasses.replace(split, records=records)


def _item(split, record, caption, gallery):
    q = _query(split, record, caption)
    pid = split.ids[record]
    return TopkItem(query=q, caption=split.records[record]["captions"][caption], pid=pid,
                    image_index=record, gallery=list(gallery),
                    scores=[0.9 - 0.1 * i for i in range(len(gallery))],
                    correct=[split.ids[j] == pid for j in gallery])


def test_explain_facts_hand_checked():
    front = {"attributes": TRUTH, "parts": {"windows": BOX, "roof": BOX}}
    assert _explain_facts(FACTS, front) == (3, ["\u2717 roof type: rack\u2260plain",
                                                "? wheels (not visible)"])
    side = {"attributes": TRUTH, "parts": {"windows": BOX, "roof": BOX, "wheels": BOX}}
    assert _explain_facts(FACTS, side) == (3, ["\u2717 roof type: rack\u2260plain",
                                               "\u2717 wheels colour: gold\u2260silver"])
    wrong_body = copy.deepcopy(TRUTH)
    wrong_body["global"] = {"type": "van", "colour": "blue"}
    wrong_body["windows"]["tint"] = "clear"
    matched, lines = _explain_facts(FACTS, {"attributes": wrong_body, "parts": side["parts"]})
    assert matched == 0 and len(lines) == _EXPLAIN_LINES
    assert lines == ["\u2717 type: sedan\u2260van", "\u2717 colour: red\u2260blue",
                     "\u2026 +3 more"]


def test_items_explain_each_retrieved_image(split):
    hand = _hand_split(split)
    (item,) = topk_figure_items([_item(hand, 1, 1, [2, 3, 4, 1])], hand, size=32)
    assert item["n_facts"] == len(FACTS)
    assert item["n_matched"] == [3, 3, 5, 5]
    assert item["explain"][0] == ["\u2717 roof type: rack\u2260plain", "? wheels (not visible)"]
    assert item["explain"][1] == ["\u2717 roof type: rack\u2260plain",
                                  "\u2717 wheels colour: gold\u2260silver"]
    assert item["explain"][2] == []                      # every stated fact visible and true
    assert len(item["explain"]) == len(item["images"]) == len(item["n_matched"]) == 4
    assert item["label"] == f"vehicle id {hand.ids[1]}"
    assert item["explain"][3] == item["target_explain"] == [] and item["target_matched"] == 5
    assert all(img.shape == (32, 32, 3) for img in [item["target"], *item["images"]])


def test_query_index_maps_to_its_own_caption_facts(split):
    """Every real caption against its own image: the image shows every part the caption names,
    so only the witness's mistakes mismatch (query index = captions() order)."""
    topk = [_item(split, r, c, [r]) for r, rec in enumerate(split.records)
            for c in range(len(rec["captions"]))]
    items = topk_figure_items(topk, split, size=8)
    facts = [fs for rec in split.records for fs in rec["caption_facts"]]
    assert len(items) == len(facts) == len(split.captions()[0])
    assert any(f["mistake"] for fs in facts for f in fs)       # the check below is not vacuous
    for t, item, fs in zip(topk, items, facts):
        mistakes = [f for f in fs if f["mistake"]]
        assert item["n_facts"] == len(fs)
        assert item["n_matched"] == [len(fs) - len(mistakes)] == [item["target_matched"]]
        assert not any(line.startswith("?") for line in item["explain"][0])
        assert len(item["explain"][0]) == min(len(mistakes), _EXPLAIN_LINES)
        if len(mistakes) == 1:
            f = mistakes[0]
            true = split.records[t.image_index]["attributes"][f["category"]]
            assert f"{f['value']}\u2260{true[f['attribute']]}" in item["explain"][0][0]


def test_no_ground_truth_keeps_plain_labels(split, tmp_path):
    records = [{k: v for k, v in r.items() if k not in ("attributes", "caption_facts")}
               for r in split.records]
    bare = dataclasses.replace(split, records=records)
    items = topk_figure_items([_item(bare, 1, 1, [2, 3, 1])], bare, size=32)
    assert set(items[0]) == PLAIN_KEYS
    topk_figure(items, tmp_path / "plain.png")
    assert (tmp_path / "plain.png").stat().st_size > 10_000


def test_figure_with_explanations_is_drawn(split, tmp_path):
    hand = _hand_split(split)
    items = topk_figure_items([_item(hand, 1, 1, [2, 3, 4, 1, 0]),
                               _item(split, 5, 0, [5, 6, 7, 8, 9])], hand)
    path = tmp_path / "topk_full.png"
    topk_figure(items, path, title="Top-5 test retrieval")
    assert path.is_file() and path.stat().st_size > 10_000
