"""benchmarks/learnability.py: the attribute-subset oracles on a hand-made split, and the probe and
top-1 tables on a tiny real synthetic benchmark (plumbing and arithmetic, not accuracy)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from pfcvr.config import load_params
from pfcvr.data.oracle import attribute_oracle
from pfcvr.runtime.atomic import read_json
from tests.support.eval_helpers import REPO, build_tiny_model, make_split_data, write_params

sys.path.insert(0, str(REPO / "benchmarks"))
import learnability as L  # noqa: E402

sys.path.remove(str(REPO / "benchmarks"))


def _record(pid: int, roof: str, stated_roof: str, split: str = "val") -> dict:
    facts = [{"category": "global", "attribute": "type", "value": "sedan"},
             {"category": "global", "attribute": "colour", "value": "red"},
             {"category": "roof", "attribute": "colour", "value": stated_roof}]
    return {"split": split, "id": pid, "file_path": f"{pid}.png", "captions": ["c"],
            "caption_facts": [facts], "parts": {"roof": {"box": [0, 0, 1, 1]}},
            "attributes": {"global": {"type": "sedan", "colour": "red"},
                           "roof": {"type": "plain", "colour": roof},
                           "wheels": {"style": "solid", "colour": "gold"}}}


def test_subset_oracles_hand_example():
    # Two red sedans that differ only in roof colour; each caption states its own roof colour.
    recs = [_record(1, "black", "black"), _record(2, "white", "white")]
    r1 = L.subset_oracles(recs, "val")
    assert r1["colours only"] == pytest.approx(100.0)    # the roof colour decides
    assert r1["type+colours"] == pytest.approx(100.0)
    assert r1["all"] == pytest.approx(100.0)
    # type+colour ties both images: it is the report's oracle, tie noise included
    assert r1["type+colour"] == pytest.approx(attribute_oracle(recs, "val")["oracle_global_R1"])
    # a witness who misremembers both roofs sends the colour oracle to the other car
    wrong = [_record(1, "black", "white"), _record(2, "white", "black")]
    assert L.subset_oracles(wrong, "val")["colours only"] == pytest.approx(0.0)


def test_visible_attributes_leave_out_hidden_parts():
    shown = L.visible_attributes(_record(1, "black", "black"))
    assert shown == {"type": "sedan", "colour": "red", "roof.type": "plain", "roof.colour": "black"}


def test_no_ground_truth_is_one_clear_error():
    rec = _record(1, "black", "black")
    del rec["caption_facts"]
    with pytest.raises(ValueError, match="learnability needs data.source: synthetic"):
        L.subset_oracles([rec], "val")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    params = load_params(write_params(root / "params.yaml", {}))
    prepared, parts = make_split_data(root, params)
    return {"root": root, "params": params, "prepared": prepared, "parts": parts}


def test_probe_reports_every_attribute_with_its_majority_rate(tiny):
    from pfcvr.data.dataset import load_split

    data = {s: load_split(tiny["prepared"], tiny["parts"], s) for s in ("train", "val")}
    out = L.supervised_probe(tiny["params"], data, steps=3)
    assert {"type", "colour"} <= set(out)
    val = data["val"].records
    types = [r["attributes"]["global"]["type"] for r in val]
    majority = 100 * max(types.count(t) for t in set(types)) / len(types)
    assert out["type"][1] == pytest.approx(majority)
    assert all(0.0 <= acc <= 100.0 for acc, _ in out.values())


def test_fact_agreement_hand_example():
    # Car 1 (black roof) is described; the ranking puts car 2 (white roof) first for its caption,
    # and car 2's caption gets car 2. Car 3 is a blue sedan whose roof is not visible.
    recs = [_record(1, "black", "black"), _record(2, "white", "white"), _record(3, "black", "black")]
    recs[2]["attributes"]["global"]["colour"] = "blue"
    recs[2]["caption_facts"][0][1]["value"] = "blue"
    recs[2]["parts"] = {}
    out = L.fact_agreement(recs, top=[1, 1, 2])
    # type: all three top-1 images are sedans; colour: car 2 is red where car 1's caption says red
    assert out["type"] == (pytest.approx(100.0), pytest.approx(100.0), 3)
    assert out["colour"] == (pytest.approx(100.0), pytest.approx(100.0), 3)
    # roof colour: query 1 -> car 2 (white, stated black: miss), query 2 -> car 2 (hit); query 3's
    # top-1 (car 3) shows no roof, so it is left out. Same type+colour wrong images: car 1's
    # caption vs car 2 (white != black: 0), car 2's caption vs car 1 (black != white: 0); car 3
    # has no wrong image of its type and colour.
    assert out["roof.colour"] == (pytest.approx(50.0), pytest.approx(0.0), 2)
    with pytest.raises(ValueError, match="2 top-1 indices for 3 captions"):
        L.fact_agreement(recs, top=[0, 1])


def test_top1_agreement_counts_every_stated_fact(tiny, tmp_path):
    from pfcvr.data.dataset import load_split
    from pfcvr.model.io import save_model

    train = load_split(tiny["prepared"], tiny["parts"], "train")
    model = build_tiny_model(tiny["params"], train.captions()[0])
    folder = save_model(model, tmp_path / "model")
    val_split = load_split(tiny["prepared"], tiny["parts"], "val")
    out = L.top1_agreement(folder, val_split)
    val = val_split.records
    type_facts = [(r, f) for r in val for fs in r["caption_facts"] for f in fs
                  if f["category"] == "global" and f["attribute"] == "type"]
    hit, base, n = out["type"]
    assert n == len(type_facts)                  # type is visible in every image
    assert 0.0 <= hit <= 100.0
    # a wrong image with the caption's true type shows the stated type unless the witness erred
    with_wrong = [(r, f) for r, f in type_facts
                  if any(o["id"] != r["id"] and o["attributes"]["global"] == r["attributes"]["global"]
                         for o in val)]
    assert with_wrong                            # families of 2: every val car has a sibling
    expected = 100 * np.mean([f["value"] == r["attributes"]["global"]["type"] for r, f in with_wrong])
    assert base == pytest.approx(expected)


def test_main_prints_the_oracle_ratios(tiny, capsys):
    params_path = tiny["root"] / "params.yaml"
    assert L.main(["--params", str(params_path), "--prepared", str(tiny["prepared"]),
                   "--parts", str(tiny["parts"]), "--steps", "0"]) == 0
    out = capsys.readouterr().out
    test_r1 = L.subset_oracles(read_json(tiny["prepared"] / "manifest.json"), "test")
    assert f"all {test_r1['all']:5.1f} ({test_r1['all'] / test_r1['type+colour']:.2f}x)" in out


def test_bad_paths_fail_before_any_work(tiny, tmp_path):
    params_path = str(tiny["root"] / "params.yaml")
    with pytest.raises(FileNotFoundError, match="prepare the benchmark first"):
        L.main(["--params", params_path, "--prepared", str(tmp_path / "none"), "--steps", "0"])
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        L.main(["--params", params_path, "--prepared", str(tiny["prepared"]),
                "--parts", str(tiny["parts"]), "--steps", "5", "--model", str(tmp_path / "none")])


def test_figure_draws_one_panel_per_table(tmp_path):
    from PIL import Image

    oracles = {"val": {"type+colour": 25.0, "colours only": 60.0, "type+colours": 80.0, "all": 90.0},
               "test": {"type+colour": 17.0, "colours only": 50.0, "type+colours": 75.0, "all": 88.0}}
    L.learnability_figure(oracles, tmp_path / "one.png")
    L.learnability_figure(oracles, tmp_path / "three.png", probe={"type": (27.0, 23.0)},
                          top1={"type": (67.0, 95.5, 10), "roof.colour": (38.7, 21.0, 5)})
    one, three = (Image.open(tmp_path / f"{n}.png") for n in ("one", "three"))
    assert three.width == pytest.approx(3 * one.width, rel=0.05)   # panels side by side
    assert abs(three.height - one.height) <= 3          # a tight bounding box moves by a pixel


@pytest.mark.parametrize("args, message", [
    (["--steps", "-1"], "--steps -1: must be 0 (no probe) or more"),
    (["--figure", "learn.txt"], "must name a .png file"),
])
def test_bad_arguments_are_refused(tiny, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        L.main(["--params", str(tiny["root"] / "params.yaml"), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_figure_folder_that_cannot_exist_fails_before_the_probe(tiny, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="its folder cannot be created"):
        L.main(["--params", str(tiny["root"] / "params.yaml"), "--prepared", str(tiny["prepared"]),
                "--parts", str(tiny["parts"]), "--steps", "5",
                "--figure", str(tmp_path / "file" / "x.png")])
