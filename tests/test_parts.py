"""Parts stage: region sources, bad input, phrase assignment quality, stats, stage outputs.

``make_fixture`` (also used by test_dataset.py and test_grounding.py) writes a small prepared
dataset in the manifest contract format with tiny PNGs whose part regions are painted in known
colours.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfcvr.data import parts as P
from pfcvr.data.categories import PART_CATEGORIES

# Part colours painted into the fixture images (crops in the figure must show them).
COLORS = {"windows": (40, 90, 220), "lights": (250, 230, 40), "wheels": (20, 20, 20),
          "mirrors": (220, 30, 30), "roof": (150, 60, 200), "doors": (40, 180, 60)}
SIDE_BOXES = {"windows": [0.30, 0.25, 0.70, 0.45], "wheels": [0.10, 0.70, 0.35, 0.95],
              "mirrors": [0.20, 0.40, 0.28, 0.50], "roof": [0.30, 0.10, 0.70, 0.22],
              "doors": [0.30, 0.48, 0.70, 0.68]}
FRONT_BOXES = {"windows": [0.20, 0.20, 0.80, 0.40], "lights": [0.10, 0.50, 0.30, 0.60],
               "mirrors": [0.02, 0.35, 0.14, 0.45], "roof": [0.25, 0.08, 0.75, 0.18]}
PHRASES = {"windows": "dark tinted windows", "lights": "round yellow headlights",
           "wheels": "black spoked wheels", "mirrors": "red side mirrors",
           "roof": "a purple roof with a rack", "doors": "two green doors"}


def _paint(size: int, boxes: dict, mark: int = 0) -> np.ndarray:
    img = np.full((size, size, 3), 200, np.uint8)
    img[: size // 2, : size // 4] = (255, 128, 0)       # asymmetric marker (flip tests)
    img[-2:, -2:] = (mark * 37 % 256, mark * 91 % 256, 255)  # makes every image distinct
    for cat, (x0, y0, x1, y1) in boxes.items():
        x0, y0 = max(x0, 0.0), max(y0, 0.0)
        img[int(y0 * size):int(np.ceil(y1 * size)), int(x0 * size):int(np.ceil(x1 * size))] = COLORS[cat]
    return img


def make_records(n_ids: int = 4, per_id: int = 2, splits=("train", "train", "val", "test")) -> list[dict]:
    """Manifest records (no files): alternating side / front views, two captions each."""
    records = []
    for pid in range(n_ids):
        for k in range(per_id):
            view = "side_left" if k % 2 == 0 else "front"
            boxes = SIDE_BOXES if view == "side_left" else FRONT_BOXES
            cats = [c for c in PART_CATEGORIES if c in boxes]
            cap_a = cats[(pid + k) % len(cats)]
            cap_b = cats[(pid + k + 1) % len(cats)]
            captions = [f"A red sedan with {PHRASES[cap_a]} and {PHRASES[cap_b]}.",
                        f"I saw a red sedan. It had {PHRASES[cap_b]}."]
            facts = [[{"category": "global", "attribute": "type", "value": "sedan",
                       "phrase": "red sedan"},
                      {"category": cap_a, "attribute": "x", "value": "y", "phrase": PHRASES[cap_a]},
                      {"category": cap_b, "attribute": "x", "value": "y", "phrase": PHRASES[cap_b]}],
                     [{"category": cap_b, "attribute": "x", "value": "y", "phrase": PHRASES[cap_b]}]]
            records.append({"split": splits[pid % len(splits)], "id": 100 + pid,
                            "file_path": f"id{pid}/img{k}.png", "captions": captions,
                            "parts": {c: {"box": list(b)} for c, b in boxes.items()},
                            "view": view, "attributes": {}, "caption_facts": facts})
    return records


def make_fixture(root: Path, n_ids: int = 4, per_id: int = 2, size: int = 48,
                 records: list[dict] | None = None) -> Path:
    """Write data/prepared-like folder (manifest.json, meta.json, images/) under ``root``."""
    prepared = Path(root) / "prepared"
    records = records if records is not None else make_records(n_ids, per_id)
    for i, rec in enumerate(records):
        path = prepared / "images" / rec["file_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        boxes = {c: r["box"] for c, r in (rec.get("parts") or {}).items()
                 if c in COLORS and isinstance(r, dict) and "box" in r}
        Image.fromarray(_paint(size, boxes, mark=i)).save(path)
    (prepared / "manifest.json").write_text(json.dumps(records))
    (prepared / "meta.json").write_text(json.dumps({"source": "fixture", "images_root": "images",
                                                    "num_records": len(records)}))
    return prepared


def write_parts(prepared: Path, source: str = "annotations") -> Path:
    """Build parts.json for a fixture (what the stage writes) and return its path."""
    records = json.loads((prepared / "manifest.json").read_text())
    doc, _ = P.build_parts(records, source)
    out = prepared.parent / "parts" / "parts.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc))
    return out


# ----------------------------------------------------------------------------------------------
# annotations
# ----------------------------------------------------------------------------------------------

def test_annotations_regions_are_aligned_and_missing_parts_are_null():
    records = make_records()
    doc, stats = P.build_parts(records, "annotations")
    assert doc["categories"] == list(PART_CATEGORIES) and doc["source"] == "annotations"
    assert len(doc["images"]) == len(records)
    for rec, im in zip(records, doc["images"]):
        assert (im["file_path"], im["split"], im["id"]) == (rec["file_path"], rec["split"], rec["id"])
        assert list(im["regions"]) == list(PART_CATEGORIES)
        for cat in PART_CATEGORIES:
            if cat in rec["parts"]:
                assert im["regions"][cat] == {"box": rec["parts"][cat]["box"],
                                              "source": "annotation", "score": 1.0}
            else:
                assert im["regions"][cat] is None
        assert len(im["phrases"]) == len(rec["captions"])
    # side views lack lights, front views lack wheels and doors: 4 of 8 images each
    assert stats["coverage_images"] == {"windows": 1.0, "lights": 0.5, "wheels": 0.5,
                                        "mirrors": 1.0, "roof": 1.0, "doors": 0.5}
    assert stats["regions_per_image"] == 4.5
    assert stats["region_sources"] == {"annotation": 36, "groundingdino": 0, "prior": 0}
    assert stats["images_per_split"] == {"test": 2, "train": 4, "val": 2}
    assert stats["dropped"] == {"unknown_category": 0, "box_outside": 0, "degenerate_box": 0,
                                "bad_region": 0}


def test_grid_regions_are_kept_and_give_the_bounding_box():
    grid = np.zeros((24, 24), int)
    grid[6:12, 3:9] = 1
    rec = make_records(1, 1)[0]
    rec["parts"] = {"wheels": {"grid": grid.tolist(), "score": 0.8},
                    "roof": {"grid": grid.ravel().tolist()},           # flat 576 as in the official
                    "doors": {"grid": np.zeros((24, 24), int).tolist()}}  # empty mask = missing
    doc, stats = P.build_parts([rec], "annotations")
    reg = doc["images"][0]["regions"]
    assert reg["wheels"]["box"] == [0.125, 0.25, 0.375, 0.5]
    assert reg["wheels"]["grid"] == grid.tolist() and reg["wheels"]["score"] == 0.8
    assert reg["roof"]["grid"] == grid.tolist()
    assert reg["doors"] is None
    assert stats["regions_per_image"] == 2.0


BAD_CASES = [
    ("unknown_category", {"bumper": {"box": [0.1, 0.1, 0.2, 0.2]}}, "unknown part category 'bumper'"),
    ("box_outside", {"wheels": {"box": [0.1, 0.1, 1.2, 0.5]}}, "outside the image"),
    ("box_outside", {"wheels": {"box": [-0.1, 0.1, 0.5, 0.5]}}, "outside the image"),
    ("degenerate_box", {"roof": {"box": [0.5, 0.1, 0.5, 0.3]}}, "degenerate"),
    ("degenerate_box", {"roof": {"box": [0.2, 0.6, 0.5, 0.3]}}, "degenerate"),
    ("bad_region", {"doors": {"grid": [[0, 2], [1, 0]]}}, "0 or 1"),
    ("bad_region", {"doors": {"grid": [[0, 1], [1]]}}, "grid"),
    ("bad_region", {"doors": {"score": 0.5}}, "neither a box nor a grid"),
    ("bad_region", {"doors": {"box": [0.1, 0.2, "x", 0.4]}}, "four finite numbers"),
]


@pytest.mark.parametrize("kind,parts,message", BAD_CASES)
def test_bad_regions_raise_naming_the_record(kind, parts, message):
    records = make_records(2, 1)
    records[1]["parts"] = {**records[1]["parts"], **parts}
    with pytest.raises(P.PartsError) as err:
        P.build_parts(records, "annotations", on_error="raise")
    text = str(err.value)
    assert "manifest record 1" in text and records[1]["file_path"] in text
    assert message in text and "data.on_error" in text


@pytest.mark.parametrize("kind,parts,message", BAD_CASES)
def test_bad_regions_are_counted_and_dropped_with_skip(kind, parts, message):
    records = make_records(2, 1)
    records[1]["parts"] = {**records[1]["parts"], **parts}
    doc, stats = P.build_parts(records, "annotations", on_error="skip")
    assert stats["dropped"][kind] == 1 and sum(stats["dropped"].values()) == 1
    assert "manifest record 1" in stats["dropped_examples"][0]
    (cat,) = parts
    if cat in PART_CATEGORIES:
        assert doc["images"][1]["regions"][cat] is None
    assert len(doc["images"]) == 2  # still aligned with the manifest
    assert doc["images"][0]["regions"] == P.build_parts(records[:1], "annotations")[0]["images"][0]["regions"]


def test_parts_must_be_a_mapping():
    records = make_records(1, 1)
    records[0]["parts"] = [{"category": "wheels", "mask": []}]
    with pytest.raises(P.PartsError, match="manifest record 0 .*must be a mapping"):
        P.build_parts(records, "annotations")


def test_records_without_parts_have_no_regions():
    records = make_records(2, 1)
    del records[0]["parts"]
    doc, stats = P.build_parts(records, "annotations")
    assert all(r is None for r in doc["images"][0]["regions"].values())
    assert stats["images_without_regions"] == 1


# ----------------------------------------------------------------------------------------------
# prior
# ----------------------------------------------------------------------------------------------

def test_prior_uses_a_fixed_layout_per_view_and_says_so():
    records = make_records(2, 2)            # views: side_left, front, side_left, front
    records[0]["view"] = "side_right"
    records[1]["view"] = "rear"
    records[2]["view"] = None               # unknown view -> the default (front) layout
    doc, stats = P.build_parts(records, "prior")
    assert "fixed per-view layout" in stats["source_note"] and "NOT detected" in stats["source_note"]
    assert stats["prior_layouts_used"] == {"side": 1, "front": 2, "rear": 1}
    side, rear, unknown, front = (doc["images"][i]["regions"] for i in range(4))
    assert unknown == front
    assert side["doors"] is not None and rear["doors"] is None and front["doors"] is None
    assert stats["region_sources"] == {"annotation": 0, "groundingdino": 0, "prior": 6 + 5 + 5 + 5}
    for reg in (side, rear, front):
        for r in reg.values():
            if r is None:
                continue
            assert r["source"] == "prior" and r["score"] == 0.0
            g = np.array(r["grid"])
            assert g.shape == (24, 24) and g.any()
            assert r["box"] == pytest.approx(P.grid_box(g.astype(bool)), abs=1e-6)
    # the side layout is left/right symmetric (the facing direction does not matter)
    for r in side.values():
        g = np.array(r["grid"])
        assert (g == g[:, ::-1]).all()
    # wheels: two separate blobs at the bottom, not one box over the whole width
    wheels = np.array(side["wheels"]["grid"])
    assert wheels[20, 3:7].all() and not wheels[20, 10:14].any()
    # the fixture carries annotation boxes, so the prior's agreement with them is measured
    agree = stats["agreement_with_annotations"]
    assert 0.0 < agree["mean_iou"] < 1.0
    # record 2 is a side image with doors, but its unknown view got the front layout (no doors)
    assert agree["missed"]["doors"] == 1 and agree["per_category"]["lights"] is not None


# ----------------------------------------------------------------------------------------------
# phrases: measured against caption_facts
# ----------------------------------------------------------------------------------------------

def test_assignment_quality_is_computed_against_caption_facts():
    records = make_records()
    doc, stats = P.build_parts(records, "annotations")
    q = stats["assignment"]
    assert q["captions"] == 16
    # fixture captions use plain part phrases: the lexicon gets them all
    assert q["precision"] == 1.0 and q["recall"] == 1.0 and q["phrase_recall"] == 1.0
    assert doc["images"][0]["phrases"] == [
        {"windows": ["dark tinted windows"], "wheels": ["black spoked wheels"]},
        {"wheels": ["black spoked wheels"]}]                  # "It had" is narration, dropped
    assert q["phrase_precision"] == 1.0
    assert doc["images"][4]["phrases"][0]["roof"] == ["a purple roof with a rack"]


def test_assignment_quality_hand_computed():
    # caption 0: truth {wheels, roof}; predicted {wheels, doors} -> tp 1, fp 1, fn 1
    # caption 1: truth {mirrors}; predicted {mirrors} -> tp 1
    rec = {"captions": ["black wheels and a door handle", "red mirrors"],
           "caption_facts": [[{"category": "wheels", "phrase": "black wheels"},
                              {"category": "roof", "phrase": "a sunroof"},
                              {"category": "global", "phrase": "red car"}],
                             [{"category": "mirrors", "phrase": "mirrors"}]]}
    phrases = P.caption_phrases([rec])
    assert phrases == [[{"wheels": ["black wheels"], "doors": ["a door handle"]},
                        {"mirrors": ["red mirrors"]}]]
    q = P.assignment_quality([rec], phrases)
    assert (q["precision"], q["recall"], q["f1"]) == (0.6667, 0.6667, 0.6667)
    assert q["phrase_recall"] == 0.6667  # "a sunroof" not found
    # assigned "black wheels" is all wheels words (1.0); "red mirrors" half mirrors words (0.5)
    assert q["phrase_precision"] == 0.75
    assert q["per_category"]["roof"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert q["per_category"]["doors"]["precision"] == 0.0 and q["per_category"]["doors"]["support"] == 0
    assert q["per_category"]["wheels"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}


def test_no_assignment_stats_without_facts():
    records = make_records(2, 1)
    for r in records:
        del r["caption_facts"]
    _, stats = P.build_parts(records, "annotations")
    assert "assignment" not in stats
    assert stats["coverage_captions"]["windows"] > 0


def test_captions_must_be_strings():
    records = make_records(2, 1)
    records[1]["captions"] = "one caption"
    with pytest.raises(P.PartsError, match="manifest record 1 .*captions"):
        P.build_parts(records, "annotations")


def test_phrase_and_caption_stats():
    rec = make_records(1, 1)[0]
    rec["captions"] = ["A red car with black wheels and red mirrors.", "A red car."]
    rec["caption_facts"] = [[], []]
    _, stats = P.build_parts([rec], "annotations")
    assert stats["num_captions"] == 2
    assert stats["phrases_per_caption"] == 1.0          # 2 phrases over 2 captions
    assert stats["categories_per_caption"] == 1.0
    assert stats["captions_without_phrases"] == 1
    assert stats["coverage_captions"]["wheels"] == 0.5 and stats["coverage_captions"]["roof"] == 0.0


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="parts.source"):
        P.build_parts(make_records(1, 1), "magic")


# ----------------------------------------------------------------------------------------------
# the stage
# ----------------------------------------------------------------------------------------------

def _stage_env(tmp_path: Path, monkeypatch, tracking: bool = False) -> None:
    """MLflow in a fresh store under tmp_path, or (tracking=False) an unreachable store, which
    the stage skips with a warning because run_stage then sets tracking.required: false."""
    store = tmp_path / ("mlflow.db" if tracking else "no-such-folder/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # MLflow artifacts land beside the store
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "test-parts")
    monkeypatch.setenv("DVC_EXP_NAME", "test-parts")


def _params_file(tmp_path: Path, **parts) -> Path:
    import yaml

    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["parts"].update(parts)
    raw["tracking"]["required"] = "no-such-folder" not in os.environ.get("MLFLOW_TRACKING_URI", "")
    out = tmp_path / "params.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


def run_stage(tmp_path: Path, prepared: Path, **parts) -> dict:
    from stages.parts import main

    out = {"out": tmp_path / "out" / "parts.json", "stats": tmp_path / "out" / "stats.json",
           "figure": tmp_path / "out" / "part_pairs.png"}
    main(["--params", str(_params_file(tmp_path, **parts)), "--prepared", str(prepared),
          "--out", str(out["out"]), "--stats", str(out["stats"]), "--figure", str(out["figure"]),
          "--cache", str(tmp_path / "cache")])
    return out


def test_stage_writes_outputs_and_logs_to_mlflow(tmp_path, monkeypatch):
    _stage_env(tmp_path, monkeypatch, tracking=True)
    prepared = make_fixture(tmp_path)
    out = run_stage(tmp_path, prepared)
    doc = json.loads(out["out"].read_text())
    stats = json.loads(out["stats"].read_text())
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert [im["file_path"] for im in doc["images"]] == [r["file_path"] for r in manifest]
    assert stats["source"] == "annotations" and stats["num_images"] == len(manifest)
    with Image.open(out["figure"]) as fig:
        assert fig.size[0] > 600 and fig.size[1] > 400
    from pfcvr.tracking import stage_runs

    (run,) = stage_runs("parts")
    assert run["status"] == "FINISHED" and run["params"]["parts.source"] == "annotations"
    assert run["tags"]["parts.source"] == "annotations"
    assert run["metrics"]["coverage_images.windows"] == 1.0
    assert run["metrics"]["assignment.precision"] == stats["assignment"]["precision"]
    assert run["metrics"]["images_per_second"] > 0


def test_stage_prior_source_without_tracking(tmp_path, monkeypatch):
    _stage_env(tmp_path, monkeypatch)
    prepared = make_fixture(tmp_path, 2, 2)
    with pytest.warns(UserWarning, match="without MLflow tracking"):
        out = run_stage(tmp_path, prepared, source="prior")
    stats = json.loads(out["stats"].read_text())
    assert stats["source"] == "prior" and stats["region_sources"]["annotation"] == 0


def test_stage_bad_record_fails_naming_it_and_writes_nothing(tmp_path, monkeypatch):
    _stage_env(tmp_path, monkeypatch)
    records = make_records(2, 1)
    records[1]["parts"]["wheels"] = {"box": [0.1, 0.1, 1.5, 0.5]}
    prepared = make_fixture(tmp_path, records=records)
    with pytest.raises(P.PartsError, match=r"manifest record 1 \(file_path 'id1/img0.png'\)"):
        run_stage(tmp_path, prepared)
    assert not (tmp_path / "out").exists()


def test_figure_items_pick_images_with_pairs(tmp_path):
    prepared = make_fixture(tmp_path)
    doc, _ = P.build_parts(json.loads((prepared / "manifest.json").read_text()), "annotations")
    items = P.figure_items(doc, prepared / "images", n=4)
    assert len(items) == 4
    for it in items:
        assert it["image"].shape == (48, 48, 3)
        assert any(it["regions"][c] is not None and it["phrases"].get(c) for c in PART_CATEGORIES)
        # each painted part's crop has the part's colour at its centre
        for cat, box in it["regions"].items():
            if box is None:
                continue
            x = int((box[0] + box[2]) / 2 * 48)
            y = int((box[1] + box[3]) / 2 * 48)
            assert tuple(it["image"][y, x]) == COLORS[cat]


def test_annotations_on_a_large_manifest():
    """2,000 records keep their order and regions (the speed goal: benchmarks/parts_speed.py)."""
    base = make_records()
    records = [copy.deepcopy(base[i % len(base)]) for i in range(2000)]
    doc, stats = P.build_parts(records, "annotations")
    assert stats["num_images"] == 2000 and len(doc["images"]) == 2000
    assert [im["file_path"] for im in doc["images"]] == [r["file_path"] for r in records]
    first = [im["regions"] for im in doc["images"][:len(base)]]
    assert all(im["regions"] == first[i % len(base)] for i, im in enumerate(doc["images"]))


if os.environ.get("PFCVR_KEEP_FIGURE"):  # pragma: no cover - manual look at the figure
    def test_write_figure_for_inspection(tmp_path):
        from pfcvr.report.figures.data import part_pairs_figure

        prepared = make_fixture(tmp_path)
        doc, _ = P.build_parts(json.loads((prepared / "manifest.json").read_text()), "annotations")
        part_pairs_figure(P.figure_items(doc, prepared / "images"), os.environ["PFCVR_KEEP_FIGURE"])


# ----------------------------------------------------------------------------------------------
# real-format data (T2I-VeRW layout: annotation JSON + per-image part files with 24x24 masks)
# ----------------------------------------------------------------------------------------------

def make_verw_fixture(root: Path, n_ids: int = 6, per_id: int = 2) -> Path:
    """A tiny T2I-VeRW-format dataset folder: 70/30 identity split (train / val)."""
    from pfcvr.data.readers import DEFAULT_ANNOTATIONS

    rng = np.random.default_rng(0)
    records = []
    for pid in range(n_ids):
        for k in range(per_id):
            name = f"{pid:04d}_c{k:03d}"
            img = rng.integers(0, 255, (40, 64, 3), dtype=np.uint8)   # not square: squashed later
            (root / "image").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "image" / f"{name}.jpg")
            dets = []
            for j, cat in enumerate(("wheels", "windows", "lights")):
                grid = np.zeros((24, 24), int)
                grid[4 + 6 * j: 8 + 6 * j, 2 + k: 12 + k] = 1
                dets.append({"category": cat, "mask": grid.tolist() if j else grid.ravel().tolist(),
                             "score": 0.5 + 0.1 * j})
            (root / "boxes").mkdir(exist_ok=True)
            (root / "boxes" / f"{name}.json").write_text(json.dumps(dets))
            records.append({"split": "train" if pid < 4 else "val", "id": pid,
                            "file_path": f"image/{name}.jpg", "boxes": f"boxes\\{name}.json",
                            "captions": ["A white car with black tires and tinted windows.",
                                         "The headlights of this sedan are narrow."],
                            "mask": [0] * 576, "prompt": "car"})
    (root / DEFAULT_ANNOTATIONS["t2i-verw"]).write_text(json.dumps(records))
    return root


def test_real_format_data_through_the_reader_and_the_stage(tmp_path, monkeypatch):
    from pfcvr.data.dataset import ImageDataset, load_split
    from pfcvr.data.readers import read_source

    _stage_env(tmp_path, monkeypatch)
    res = read_source("t2i-verw", make_verw_fixture(tmp_path / "verw"), val_fraction=0.25, seed=0)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "manifest.json").write_text(json.dumps(res.records))
    (prepared / "meta.json").write_text(json.dumps({"source": "t2i-verw",
                                                    "images_root": str(res.images_root)}))
    with pytest.warns(UserWarning, match="without MLflow tracking"):
        out = run_stage(tmp_path, prepared)
    doc = json.loads(out["out"].read_text())
    stats = json.loads(out["stats"].read_text())
    assert stats["num_images"] == 12 and "assignment" not in stats   # no ground-truth facts
    assert stats["coverage_images"] == {"windows": 1.0, "lights": 1.0, "wheels": 1.0,
                                        "mirrors": 0.0, "roof": 0.0, "doors": 0.0}
    assert stats["coverage_captions"]["wheels"] == 0.5 and stats["coverage_captions"]["lights"] == 0.5
    reg = doc["images"][0]["regions"]
    assert reg["wheels"]["source"] == "annotation" and reg["wheels"]["score"] == 0.5
    assert np.array(reg["wheels"]["grid"]).shape == (24, 24)
    assert reg["wheels"]["box"] == pytest.approx([2 / 24, 4 / 24, 12 / 24, 8 / 24], abs=1e-4)
    assert doc["images"][0]["phrases"][0] == {"windows": ["tinted windows"],
                                              "wheels": ["black tires"]}
    # and the dataset turns the grids into patch masks for training
    split = load_split(prepared, out["out"], "train")
    ds = ImageDataset(split, 48, 12)
    sample = ds[0]
    assert sample["image"].shape == (3, 48, 48)
    assert sample["part_present"].tolist() == [True, True, True, False, False, False]
    wheels = sample["part_masks"][2].reshape(4, 4)
    # grid rows 4-7, columns 2-11 of 24 on a 4 x 4 patch grid (6 x 6 source cells each): no
    # cell is half covered (best: (0, 1) and (1, 1) with 12/36), so the first best cell is kept
    assert split.records[0]["file_path"] == "image/0000_c000.jpg"
    assert torch_nonzero_cells(wheels) == {(0, 1)}


def torch_nonzero_cells(mask) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in mask.nonzero().tolist()}


# ----------------------------------------------------------------------------------------------
# parts.unknown_category (issue 12)
# ----------------------------------------------------------------------------------------------

def test_unknown_category_ignore_keeps_the_known_parts(tmp_path, monkeypatch):
    records = make_records(2, 1)
    records[1]["parts"] = {**records[1]["parts"], "license_plate": {"box": [0.4, 0.8, 0.6, 0.9]}}
    with pytest.raises(P.PartsError, match=r"unknown part category 'license_plate' .*parts\."
                                           r"unknown_category: ignore leaves such parts out"):
        P.build_parts(records, "annotations")
    doc, stats = P.build_parts(records, "annotations", on_error="raise", unknown_category="ignore")
    assert stats["ignored"] == {"unknown_category": 1, "categories": {"license_plate": 1}}
    assert stats["dropped"]["unknown_category"] == 0
    clean = P.build_parts(make_records(2, 1), "annotations")[0]
    assert doc["images"][1]["regions"] == clean["images"][1]["regions"]   # six known parts kept
    # the stage reads the key from params.yaml, and publishes its three outputs as one set
    _stage_env(tmp_path, monkeypatch)
    prepared = make_fixture(tmp_path / "fx", records=records)
    with pytest.warns(UserWarning, match="without MLflow tracking"):
        out = run_stage(tmp_path, prepared, unknown_category="ignore")
    assert json.loads(out["stats"].read_text())["ignored"]["unknown_category"] == 1
    assert sorted(p.name for p in out["out"].parent.iterdir()) == ["part_pairs.png", "parts.json",
                                                                  "stats.json"]


def test_stage_user_error_ends_as_one_line(tmp_path, monkeypatch, capsys):
    """`python -m stages.parts` wraps main in pfcvr.runtime.stage.run_stage: bad part data is one line."""
    from pfcvr.runtime.stage import run_stage
    from stages.parts import main

    _stage_env(tmp_path, monkeypatch)
    records = make_records(2, 1)
    records[1]["parts"]["wheels"] = {"box": [0.1, 0.1, 1.5, 0.5]}
    prepared = make_fixture(tmp_path, records=records)
    args = ["--params", str(_params_file(tmp_path)), "--prepared", str(prepared),
            "--out", str(tmp_path / "out" / "parts.json"), "--cache", str(tmp_path / "cache")]
    assert run_stage("parts", lambda: main(args)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("parts: error: manifest record 1 (file_path 'id1/img0.png'), part "
                          "'wheels': box [0.1, 0.1, 1.5, 0.5] lies outside the image")
