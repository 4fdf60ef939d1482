"""Real dataset formats -> canonical records, with fixtures in the published JSON layouts."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfcvr.data.manifest import DataError, Problems, carve_val, validate_records
from pfcvr.data.readers import DEFAULT_ANNOTATIONS, read_part_file, read_source

VERI = DEFAULT_ANNOTATIONS["t2i-veri"]
VERW = DEFAULT_ANNOTATIONS["t2i-verw"]


def write_image(path: Path, seed: int = 0, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (20, 16, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def grid(rows: slice, cols: slice, flat: bool = False) -> list:
    g = np.zeros((24, 24), dtype=int)
    g[rows, cols] = 1
    return g.reshape(-1).tolist() if flat else g.tolist()


def t2i_dataset(root: Path, splits: dict[int, str], per_id: int = 2, name: str = VERI,
                windows_paths: bool = True) -> list[dict]:
    """A T2I-VeRI/VeRW-layout folder: image/<id>/<k>.jpg, boxes/<id>_<k>.json, the annotation JSON.

    ``splits``: id -> split name as written in the file. Half the paths use back-slashes.
    """
    recs = []
    for pid, split in splits.items():
        for k in range(per_id):
            rel = f"image/{pid:04d}/{pid:04d}_{k}.jpg"
            write_image(root / rel, seed=pid * 10 + k)
            dets = [{"category": "wheels", "mask": grid(slice(18, 22), slice(2, 6)), "score": 0.4},
                    {"category": "wheels", "mask": grid(slice(18, 22), slice(16, 20), flat=True),
                     "score": 0.7},
                    {"category": "windows", "mask": grid(slice(4, 9), slice(6, 18)), "score": 0.9}]
            box = f"boxes/{pid:04d}_{k}.json"
            (root / "boxes").mkdir(exist_ok=True)
            (root / box).write_text(json.dumps(dets))
            if windows_paths and k % 2:
                rel, box = rel.replace("/", "\\"), box.replace("/", "\\")
            recs.append({"split": split, "id": pid, "file_path": rel,
                         "captions": [f"a white sedan number {pid}", "black  wheels"],
                         "boxes": box, "mask": grid(slice(0, 24), slice(0, 24)), "prompt": "car"})
    (root / name).write_text(json.dumps(recs))
    return recs


def rewrite(root: Path, name: str, change) -> None:
    recs = json.loads((root / name).read_text())
    change(recs)
    (root / name).write_text(json.dumps(recs))


def read(root, source="t2i-veri", on_error="raise", annotations="", val_fraction=0.25):
    return read_source(source, root, annotations, val_fraction=val_fraction, seed=0, on_error=on_error)


# ---------------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------------

def test_t2i_veri_records_splits_and_parts(tmp_path):
    t2i_dataset(tmp_path, {1: "train", 2: "train", 3: "train", 4: "test", 5: "other"})
    res = read(tmp_path)
    assert res.images_root == tmp_path.resolve() and res.annotations.name == VERI
    assert Counter(r["split"] for r in res.records) == {"train": 6, "test": 2, "val": 2}
    assert res.val_carved_ids == 0 and not res.val_is_test
    assert not validate_records(res.records)
    r = res.records[1]                                     # written with back-slashes
    assert r["file_path"] == "image/0001/0001_1.jpg" and (res.images_root / r["file_path"]).is_file()
    assert r["captions"] == ["a white sedan number 1", "black wheels"]
    assert set(r) == {"split", "id", "file_path", "captions", "parts"}   # mask/prompt not kept
    wheels = r["parts"]["wheels"]                          # two detections merged by union
    assert wheels["box"] == [round(2 / 24, 4), round(18 / 24, 4), round(20 / 24, 4), round(22 / 24, 4)]
    g = np.asarray(wheels["grid"])
    assert g.sum() == 2 * 16 and g[19, 3] == 1 and g[19, 10] == 0 and g[19, 17] == 1
    assert wheels["score"] == 0.7
    assert r["parts"]["windows"]["box"] == [0.25, round(4 / 24, 4), 0.75, 0.375]
    assert set(r["parts"]) == {"wheels", "windows"}


def test_t2i_verw_val_becomes_test_and_val_is_carved_from_train(tmp_path):
    ids = {i: ("train" if i <= 8 else "val") for i in range(1, 13)}
    t2i_dataset(tmp_path, ids, name=VERW)
    res = read(tmp_path, "t2i-verw")
    assert res.val_is_test and res.val_carved_ids == 2     # round(0.25 * 8)
    by_split = {s: {r["id"] for r in res.records if r["split"] == s} for s in ("train", "val", "test")}
    assert by_split["test"] == {9, 10, 11, 12}
    assert len(by_split["val"]) == 2 and by_split["val"] | by_split["train"] == set(range(1, 9))
    assert not by_split["val"] & by_split["train"]
    again = read(tmp_path, "t2i-verw")                      # carving is deterministic
    assert [r["split"] for r in again.records] == [r["split"] for r in res.records]


def test_cuhk_pedes_layout(tmp_path):
    recs = []
    for pid, split in ((1, "train"), (2, "train"), (3, "val"), (4, "test")):
        rel = f"CUHK01/{pid:07d}.png"
        write_image(tmp_path / "imgs" / rel, pid, "PNG")
        recs.append({"split": split, "id": pid, "file_path": rel, "processed_tokens": [["a"]],
                     "captions": [f"a woman in a red coat {pid}"]})
    (tmp_path / "reid_raw.json").write_text(json.dumps(recs))
    res = read(tmp_path, "cuhk-pedes")
    assert res.images_root == (tmp_path / "imgs").resolve()
    assert [r["split"] for r in res.records] == ["train", "train", "val", "test"]
    assert all("parts" not in r for r in res.records) and not validate_records(res.records)
    rewrite(tmp_path, "reid_raw.json", lambda rs: rs[0].update(split="dev"))
    with pytest.raises(DataError, match=r"record 0 \(CUHK01/0000001\.png\): split 'dev' is not one of "
                                        r"train, val, test"):
        read(tmp_path, "cuhk-pedes")


def test_annotation_file_choice_and_errors(tmp_path):
    t2i_dataset(tmp_path, {1: "train", 2: "test"}, name="mine.json")
    assert len(read(tmp_path, annotations="mine.json").records) == 4
    with pytest.raises(FileNotFoundError, match=r"data\.annotations: .*" + VERI + r" not found; JSON "
                                                r"files in .*: mine\.json"):
        read(tmp_path)
    with pytest.raises(ValueError, match=r"data\.root is empty"):
        read_source("t2i-veri", "", val_fraction=0.1, seed=0)
    with pytest.raises(FileNotFoundError, match=r"data\.root=.*nowhere.*dataset folder not found"):
        read(tmp_path / "nowhere")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        read(tmp_path, annotations="broken.json")
    (tmp_path / "dict.json").write_text("{}")
    with pytest.raises(ValueError, match=r"dict\.json: must be a JSON list of per-image records"):
        read(tmp_path, annotations="dict.json")


# ---------------------------------------------------------------------------------------------
# bad input: each case names the record and the problem
# ---------------------------------------------------------------------------------------------

BAD_CASES = {
    "missing_image": (lambda root, rs: (root / rs[2]["file_path"]).unlink(),
                      r"record 2 \(image/0002/0002_0\.jpg\): image file not found: .*0002_0\.jpg"),
    "corrupt_image": (lambda root, rs: (root / rs[2]["file_path"]).write_bytes(b"not an image"),
                      r"record 2 \(image/0002/0002_0\.jpg\): unreadable image: corrupt: "
                      r"UnidentifiedImageError"),
    "truncated_image": (lambda root, rs: (root / rs[2]["file_path"]).write_bytes(
        (root / rs[2]["file_path"]).read_bytes()[:200]),
        r"record 2 \(image/0002/0002_0\.jpg\): unreadable image: corrupt: "),
    "missing_field": (lambda root, rs: rs[2].pop("captions"),
                      r"record 2 \(image/0002/0002_0\.jpg\): missing required field\(s\) captions"),
    "empty_caption": (lambda root, rs: rs[2].update(captions=["fine", "   "]),
                      r"record 2 \(image/0002/0002_0\.jpg\): caption 1 is empty"),
    "no_captions": (lambda root, rs: rs[2].update(captions=[]),
                    r"record 2 \(image/0002/0002_0\.jpg\): no captions"),
    "captions_not_list": (lambda root, rs: rs[2].update(captions="a car"),
                          r"record 2 \(image/0002/0002_0\.jpg\): captions must be a list of strings"),
    "bad_id": (lambda root, rs: rs[2].update(id="car-2"),
               r"record 2 \(image/0002/0002_0\.jpg\): id 'car-2' is not an integer"),
    "id_in_two_splits": (lambda root, rs: rs[2].update(split="test"),
                         r"record 2 \(image/0002/0002_0\.jpg\): identity 2 appears in test \(1 record\) "
                         r"and train \(1 record\); splits must be identity-disjoint"),
    "missing_part_file": (lambda root, rs: (root / rs[2]["boxes"]).unlink(),
                          r"record 2 \(image/0002/0002_0\.jpg\): part file does not exist: "
                          r".*boxes/0002_0\.json"),
    "unknown_part_category": (lambda root, rs: (root / rs[2]["boxes"]).write_text(json.dumps(
        [{"category": "hood", "mask": grid(slice(0, 2), slice(0, 2)), "score": 0.5}])),
        r"record 2 \(image/0002/0002_0\.jpg\): detection 0: unknown part category 'hood' \(known: "
        r"windows, lights, wheels, mirrors, roof, doors\) \(boxes/0002_0\.json\)"),
    "bad_mask": (lambda root, rs: (root / rs[2]["boxes"]).write_text(json.dumps(
        [{"category": "roof", "mask": [1, 0, 1], "score": 0.5}])),
        r"record 2 \(image/0002/0002_0\.jpg\): detection 0 \(roof\): flat mask of length 3 is not "
        r"square"),
    "escaping_path": (lambda root, rs: rs[2].update(file_path="../elsewhere.jpg"),
                      r"record 2 \(\.\./elsewhere\.jpg\): file_path '\.\./elsewhere\.jpg' must not leave "
                      r"the dataset folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_each_bad_input_is_named_then_skippable(tmp_path, case):
    damage, message = BAD_CASES[case]
    t2i_dataset(tmp_path, {1: "train", 2: "train", 3: "train", 4: "test"}, windows_paths=False)
    recs = json.loads((tmp_path / VERI).read_text())
    damage(tmp_path, recs)
    (tmp_path / VERI).write_text(json.dumps(recs))
    with pytest.raises(DataError) as info:
        read(tmp_path)
    text = str(info.value)
    assert text.startswith(f"{(tmp_path / VERI).resolve()}: ")
    assert "set data.on_error: skip to drop bad records" in text
    assert re.search(message, text), text
    res = read(tmp_path, on_error="skip")
    kind = {"truncated_image": "corrupt_image", "no_captions": "empty_caption",
            "captions_not_list": "bad_captions", "bad_mask": "bad_part_file",
            "escaping_path": "bad_file_path"}.get(case, case)
    n_bad = 2 if case == "id_in_two_splits" else 1           # both records of the split identity
    assert res.skipped == {kind: n_bad, "total": n_bad}
    assert len(res.records) == 8 - n_bad
    assert not validate_records(res.records)


def test_many_offenders_are_listed_first_few_plus_total(tmp_path):
    t2i_dataset(tmp_path, {i: "train" for i in range(1, 6)} | {9: "test"}, windows_paths=False)
    for p in sorted((tmp_path / "image").rglob("*.jpg"))[:8]:
        p.unlink()
    with pytest.raises(DataError) as info:
        read(tmp_path)
    lines = str(info.value).splitlines()
    assert ": 8 bad record(s), 8 problem(s); set data.on_error: skip" in lines[0]
    assert lines[0].endswith("First 5:")
    assert [ln.strip().split(" (")[0] for ln in lines[1:6]] == [f"record {i}" for i in range(5)]
    assert lines[6].strip() == "... and 3 more problem(s) (missing_image: 8)"


def test_skipping_everything_of_a_split_is_an_error(tmp_path):
    t2i_dataset(tmp_path, {1: "train", 2: "test"}, windows_paths=False)
    for p in (tmp_path / "image" / "0002").glob("*.jpg"):
        p.unlink()
    with pytest.raises(ValueError, match=r"no test records left \(after skipping 2 bad ones\)"):
        read(tmp_path, on_error="skip")


# ---------------------------------------------------------------------------------------------
# pieces
# ---------------------------------------------------------------------------------------------

def test_part_file_union_and_empty_masks(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps([{"category": "doors", "mask": grid(slice(10, 12), slice(0, 3))},
                             {"category": "doors", "mask": grid(slice(14, 16), slice(5, 8))},
                             {"category": "roof", "mask": grid(slice(0, 0), slice(0, 0))}]))
    parts = read_part_file(f)
    assert set(parts) == {"doors"}                          # an all-zero mask marks nothing
    assert parts["doors"]["box"] == [0.0, round(10 / 24, 4), round(8 / 24, 4), round(16 / 24, 4)]
    assert parts["doors"]["score"] == 1.0
    f.write_text(json.dumps([{"category": "doors", "mask": grid(slice(0, 1), slice(0, 1)), "score": "hi"}]))
    assert read_part_file(f) == "detection 0 (doors): score 'hi' is not a number"
    f.write_text(json.dumps({"category": "doors"}))
    assert read_part_file(f).startswith("part file must be a JSON list of detections")
    f.write_text(json.dumps([{"category": "doors", "mask": [[0, 2], [1, 1]]}]))
    assert read_part_file(f) == "detection 0 (doors): mask values must be 0 or 1"


def test_carve_val_fraction_bounds():
    recs = [{"split": "train", "id": i, "file_path": f"{i}", "captions": ["x"]} for i in range(10)]
    out, n = carve_val(recs, 0.0, 0)
    assert n == 0 and out == recs
    out, n = carve_val(recs, 0.01, 0)
    assert n == 1 and sum(r["split"] == "val" for r in out) == 1   # at least one when asked
    out, n = carve_val(recs, 0.99, 0)
    assert n == 9                                                   # never every training id
    assert carve_val(recs, 0.3, 1)[0] != carve_val(recs, 0.3, 2)[0]


def test_problems_message_without_overflow():
    p = Problems("x.json")
    p.add(3, "a.jpg", "missing_image", "gone")
    assert p.message() == "x.json: 1 bad record(s), 1 problem(s). First 1:\n  record 3 (a.jpg): gone"
    assert p.counts() == {"missing_image": 1}
