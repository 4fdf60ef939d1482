"""Person benchmarks by name (icfg-pedes, rstpreid), records of one image merged, one-line layout
mismatch errors, byte-order marks and unknown part categories. Fixtures are written in the
published JSON layouts with tiny images made here."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pfcvr.data.manifest import DataError, validate_records
from pfcvr.data.readers import read_part_file, read_source
from tests.test_readers import VERI, grid, read, rewrite, t2i_dataset, write_image


def icfg_dataset(root: Path, train_ids=range(1, 7), test_ids=(7, 8), per_id: int = 2) -> list[dict]:
    """ICFG-PEDES layout: imgs/{train,test}/<id>/<id>_<k>.jpg and ICFG-PEDES.json."""
    recs = []
    for split, ids in (("train", train_ids), ("test", test_ids)):
        for pid in ids:
            for k in range(per_id):
                rel = f"{split}/{pid:04d}/{pid:04d}_{k:03d}_05_0303morning_{k:04d}_0.jpg"
                write_image(root / "imgs" / rel, pid * 10 + k)
                recs.append({"id": pid, "file_path": rel,
                             "captions": [f"The man wears a grey coat number {pid}."],
                             "processed_tokens": [["the", "man"]], "split": split})
    (root / "ICFG-PEDES.json").write_text(json.dumps(recs))
    return recs


def rstp_dataset(root: Path, splits=None, per_id: int = 2) -> list[dict]:
    """RSTPReid layout: imgs/<id>_c<cam>_<k>.jpg and data_captions.json with `img_path`."""
    splits = splits or {1: "train", 2: "train", 3: "train", 4: "val", 5: "test", 6: "test"}
    recs = []
    for pid, split in splits.items():
        for k in range(per_id):
            rel = f"{pid:04d}_c{k + 1}_{k:04d}.jpg"
            write_image(root / "imgs" / rel, pid * 10 + k)
            recs.append({"id": pid, "img_path": rel, "split": split,
                         "captions": [f"A woman in a red coat {pid}.", f"She carries a bag {pid}."]})
    (root / "data_captions.json").write_text(json.dumps(recs))
    return recs


def per_caption_dataset(root: Path, n_images: int = 40, n_ids: int = 10) -> list[dict]:
    """CUHK-PEDES layout written one record per caption (APTM / TBPS-CLIP / RaSa style):
    ``n_images`` files, each listed twice with one caption. Identities 1..n_ids, 4 images each;
    ids 1-6 train, 7-8 val, 9-10 test."""
    recs, per_id = [], n_images // n_ids
    for img in range(n_images):
        pid = img // per_id + 1
        split = "train" if pid <= 6 else "val" if pid <= 8 else "test"
        rel = f"CUHK01/{img:07d}.png"
        write_image(root / "imgs" / rel, img, "PNG")
        for c in range(2):
            recs.append({"split": split, "id": pid, "file_path": rel,
                         "captions": [f"person {pid} image {img} caption {c}"]})
    (root / "reid_raw.json").write_text(json.dumps(recs))
    return recs


# ----------------------------------------------------------------------------------------------
# icfg-pedes and rstpreid
# ----------------------------------------------------------------------------------------------

def test_icfg_pedes_train_test_only_with_val_carved_from_train(tmp_path):
    icfg_dataset(tmp_path)
    res = read(tmp_path, "icfg-pedes")
    assert res.images_root == (tmp_path / "imgs").resolve() and res.annotations.name == "ICFG-PEDES.json"
    assert Counter(r["split"] for r in res.records) == {"train": 8, "val": 4, "test": 4}
    assert res.val_carved_ids == 2                               # round(0.25 * 6 train ids)
    assert res.records[0]["file_path"] == "train/0001/0001_000_05_0303morning_0000_0.jpg"
    assert set(res.records[0]) == {"split", "id", "file_path", "captions"}   # tokens not kept
    assert not validate_records(res.records)
    rewrite(tmp_path, "ICFG-PEDES.json", lambda rs: rs[0].update(split="val"))
    with pytest.raises(DataError, match=r"record 0 \(train/0001/.*\): split 'val' is not one of "
                                        r"train, test"):
        read(tmp_path, "icfg-pedes")


def test_icfg_pedes_accepts_its_underscore_file_name(tmp_path):
    icfg_dataset(tmp_path)
    (tmp_path / "ICFG-PEDES.json").rename(tmp_path / "ICFG_PEDES.json")
    assert read(tmp_path, "icfg-pedes").annotations.name == "ICFG_PEDES.json"


def test_rstpreid_reads_img_path_and_its_three_splits(tmp_path):
    rstp_dataset(tmp_path)
    res = read(tmp_path, "rstpreid")
    assert res.images_root == (tmp_path / "imgs").resolve()
    assert res.annotations.name == "data_captions.json" and res.val_carved_ids == 0
    assert Counter(r["split"] for r in res.records) == {"train": 6, "val": 2, "test": 4}
    assert res.records[0] == {"split": "train", "id": 1, "file_path": "0001_c1_0000.jpg",
                              "captions": ["A woman in a red coat 1.", "She carries a bag 1."]}


def test_prepare_and_parts_run_on_rstpreid(tmp_path):
    from pfcvr.config import load_params
    from pfcvr.data.parts import build_parts
    from pfcvr.pipeline.prepare import prepare
    from tests.test_prepare import outputs, write_params

    ds = tmp_path / "RSTPReid"
    rstp_dataset(ds)
    params = load_params(write_params(tmp_path / "p.yaml", **{
        "data.source": "rstpreid", "data.root": str(ds), "parts.source": "prior"}))
    out, stats_path, fig = outputs(tmp_path)
    stats = prepare(params, out, stats_path, fig, workers=1)
    assert stats["source"] == "rstpreid" and stats["total"] == {"ids": 6, "images": 12, "captions": 24}
    assert stats["duplicates"] == {"records_merged": 0, "images_merged": 0, "captions_dropped": 0}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["images_root"] == str((ds / "imgs").resolve())
    doc, _ = build_parts(json.loads((out / "manifest.json").read_text()), "prior")
    assert len(doc["images"]) == 12


# ----------------------------------------------------------------------------------------------
# records of one image
# ----------------------------------------------------------------------------------------------

def test_one_record_per_caption_is_merged_into_one_record_per_image(tmp_path):
    per_caption_dataset(tmp_path)
    res = read(tmp_path, "cuhk-pedes")
    assert len(res.records) == 40                                # not 80
    assert res.duplicates == {"records_merged": 40, "images_merged": 40, "captions_dropped": 0}
    assert res.records[0]["captions"] == ["person 1 image 0 caption 0", "person 1 image 0 caption 1"]
    assert res.skipped == {"total": 0}
    assert len({r["file_path"] for r in res.records}) == 40


def test_exact_repeats_of_a_caption_are_dropped_in_order(tmp_path):
    per_caption_dataset(tmp_path)
    # record 1 repeats record 0's caption (with other spacing); record 3 has it twice itself
    rewrite(tmp_path, "reid_raw.json", lambda rs: (
        rs[1].update(captions=["person 1 image 0   caption 0"]),
        rs[3].update(captions=["person 1 image 1 caption 1", "x", "person 1 image 1 caption 1"])))
    res = read(tmp_path, "cuhk-pedes")
    assert res.records[0]["captions"] == ["person 1 image 0 caption 0"]
    assert res.records[1]["captions"] == ["person 1 image 1 caption 0", "person 1 image 1 caption 1", "x"]
    assert res.duplicates == {"records_merged": 40, "images_merged": 40, "captions_dropped": 2}


def test_prepare_counts_40_images_for_40_files_and_the_test_gallery_holds_each_once(tmp_path):
    from pfcvr.config import load_params
    from pfcvr.data.dataset import load_split
    from pfcvr.data.parts import build_parts
    from pfcvr.pipeline.prepare import prepare
    from tests.test_prepare import outputs, write_params

    ds = tmp_path / "CUHK-PEDES"
    per_caption_dataset(ds)
    params = load_params(write_params(tmp_path / "p.yaml", **{
        "data.source": "cuhk-pedes", "data.root": str(ds)}))
    out, stats_path, fig = outputs(tmp_path)
    stats = prepare(params, out, stats_path, fig, workers=1)
    assert stats["total"] == {"ids": 10, "images": 40, "captions": 80}       # was 80 images
    assert stats["duplicates"] == {"records_merged": 40, "images_merged": 40, "captions_dropped": 0}
    assert json.loads((out / "meta.json").read_text())["duplicates"]["records_merged"] == 40
    parts = tmp_path / "parts.json"
    parts.write_text(json.dumps(build_parts(json.loads((out / "manifest.json").read_text()),
                                            "prior")[0]))
    test = load_split(out, parts, "test")
    assert len(test.paths) == 8 == len(set(test.paths))                      # was 16, each twice
    assert len(test.captions()[0]) == 16


def test_one_image_under_two_ids_or_two_splits_is_an_error_naming_both_records(tmp_path):
    per_caption_dataset(tmp_path)
    rewrite(tmp_path, "reid_raw.json", lambda rs: rs[1].update(id=2))
    with pytest.raises(DataError, match=r"record 1 \(CUHK01/0000000\.png\): image "
                                        r"CUHK01/0000000\.png is listed under two identities: "
                                        r"record 0 \(id 1, split train\) and record 1 \(id 2, split "
                                        r"train\); an image has one identity and one split"):
        read(tmp_path, "cuhk-pedes")
    res = read(tmp_path, "cuhk-pedes", on_error="skip")
    assert res.skipped == {"image_in_two_ids": 2, "total": 2} and len(res.records) == 39
    per_caption_dataset(tmp_path)
    rewrite(tmp_path, "reid_raw.json", lambda rs: rs[1].update(split="val"))
    with pytest.raises(DataError, match=r"image CUHK01/0000000\.png is listed under two splits: "
                                        r"record 0 \(id 1, split train\) and record 1 \(id 1, "
                                        r"split val\)"):
        read(tmp_path, "cuhk-pedes")


def test_a_manifest_or_split_that_still_lists_an_image_twice_is_refused(tmp_path):
    from pfcvr.data.dataset import load_split
    from tests.test_parts import make_fixture, make_records, write_parts

    records = make_records(2, 2)
    records[1] = dict(records[0], captions=["another caption"])
    assert validate_records(records).counts() == {"duplicate_image": 1}
    prepared = make_fixture(tmp_path, records=records)
    with pytest.raises(ValueError, match=r"manifest record 1 lists image 'id0/img0\.png' again "
                                         r"\(also record 0\); rerun the prepare stage"):
        load_split(prepared, write_parts(prepared), "train")


# ----------------------------------------------------------------------------------------------
# layout mismatches: one line, naming what was expected
# ----------------------------------------------------------------------------------------------

def one_line_error(root: Path, source: str, on_error: str = "raise") -> str:
    with pytest.raises(DataError) as info:
        read(root, source, on_error=on_error)
    text = str(info.value)
    assert "\n" not in text and text.endswith("data.on_error: skip would drop every record")
    return text


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_rstpreid_file_read_as_cuhk_pedes_names_the_field_and_the_source(tmp_path, on_error):
    rstp_dataset(tmp_path)
    (tmp_path / "data_captions.json").rename(tmp_path / "reid_raw.json")
    text = one_line_error(tmp_path, "cuhk-pedes", on_error)
    assert text == (f"{(tmp_path / 'reid_raw.json').resolve()}: layout mismatch: all 12 records fail "
                    "the same way (missing_field): no record has the field 'file_path' that "
                    "data.source=cuhk-pedes reads (records {split, id, file_path, captions}, splits "
                    "train, val, test); the records have captions, id, img_path, split: this is the "
                    "layout of data.source=rstpreid. data.on_error: skip would drop every record")


def test_paths_already_prefixed_with_imgs_name_the_prefix(tmp_path):
    recs = per_caption_dataset(tmp_path)
    (tmp_path / "reid_raw.json").write_text(json.dumps(
        [dict(r, file_path="imgs/" + r["file_path"]) for r in recs]))
    text = one_line_error(tmp_path, "cuhk-pedes")
    imgs = (tmp_path / "imgs").resolve()
    assert (f"all 40 records fail the same way (missing_image): the file_path values start with "
            f"'imgs/', but they are read relative to {imgs}, which is that folder already; "
            "expected paths without the 'imgs/' prefix (e.g. CUHK01/0000000.png)") in text


def test_paths_missing_their_folder_prefix_name_the_folder(tmp_path):
    t2i_dataset(tmp_path, {1: "train", 2: "train", 3: "test"}, windows_paths=False)
    rewrite(tmp_path, VERI, lambda rs: [r.update(file_path=r["file_path"][len("image/"):]) for r in rs])
    text = one_line_error(tmp_path, "t2i-veri")
    assert (f"(missing_image): the images are under {tmp_path.resolve() / 'image'}: expected "
            "file_path values that start with 'image/' (e.g. image/0001/0001_0.jpg)") in text


def test_other_split_names_are_named(tmp_path):
    per_caption_dataset(tmp_path)
    rewrite(tmp_path, "reid_raw.json", lambda rs: [r.update(
        split={"train": "training", "val": "validation", "test": "testing"}[r["split"]]) for r in rs])
    text = one_line_error(tmp_path, "cuhk-pedes")
    assert ("(bad_split): the file's splits are testing, training, validation; "
            "data.source=cuhk-pedes expects train, val, test") in text


def test_every_record_bad_in_different_ways_does_not_suggest_skip(tmp_path):
    t2i_dataset(tmp_path, {1: "train", 2: "test"}, windows_paths=False)
    rewrite(tmp_path, VERI, lambda rs: (rs[0].update(id="x"), rs[1].update(captions=[]),
                                        rs[2].update(captions="a"), rs[3].pop("split")))
    with pytest.raises(DataError) as info:
        read(tmp_path)
    first = str(info.value).splitlines()[0]
    assert first.endswith("no record is usable, so data.on_error: skip would drop every one: check "
                          "that data.source, data.root and data.annotations match the files. First 4:")


# ----------------------------------------------------------------------------------------------
# harmless input: a byte-order mark, unknown part categories
# ----------------------------------------------------------------------------------------------

def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    recs = t2i_dataset(tmp_path, {1: "train", 2: "test"})
    (tmp_path / VERI).write_bytes(b"\xef\xbb\xbf" + json.dumps(recs).encode())
    box = tmp_path / "boxes" / "0001_0.json"
    box.write_bytes(b"\xef\xbb\xbf" + box.read_bytes())
    res = read(tmp_path)
    assert len(res.records) == 4 and set(res.records[0]["parts"]) == {"wheels", "windows"}


def add_license_plate(root: Path, box: str = "boxes/0002_0.json") -> None:
    dets = json.loads((root / box).read_text())
    dets.append({"category": "license_plate", "mask": grid(slice(20, 22), slice(10, 14)), "score": 0.9})
    (root / box).write_text(json.dumps(dets))


def test_unknown_part_category_error_by_default_ignore_keeps_the_image(tmp_path):
    t2i_dataset(tmp_path, {1: "train", 2: "train", 3: "train", 4: "test"}, windows_paths=False)
    add_license_plate(tmp_path)
    with pytest.raises(DataError, match=r"record 2 \(image/0002/0002_0\.jpg\): detection 3: unknown "
                                        r"part category 'license_plate'"):
        read(tmp_path)
    skipped = read(tmp_path, on_error="skip")                  # error + skip: as before, dropped
    assert len(skipped.records) == 7 and skipped.skipped == {"unknown_part_category": 1, "total": 1}
    res = read_source("t2i-veri", tmp_path, val_fraction=0.25, seed=0, on_error="skip",
                      unknown_category="ignore")
    assert len(res.records) == 8 and res.skipped == {"total": 0}
    assert res.ignored_parts == {"license_plate": 1}
    kept = next(r for r in res.records if r["file_path"] == "image/0002/0002_0.jpg")
    assert set(kept["parts"]) == {"wheels", "windows"}         # its known parts, unchanged
    assert kept["parts"] == res.records[0]["parts"]            # same detections, plate aside


def test_every_part_file_with_unknown_categories_hints_at_ignore(tmp_path):
    t2i_dataset(tmp_path, {1: "train", 2: "test"}, windows_paths=False)
    for box in sorted((tmp_path / "boxes").glob("*.json")):
        add_license_plate(tmp_path, str(box.relative_to(tmp_path)))
    text = one_line_error(tmp_path, "t2i-veri", "skip")
    assert ("(unknown_part_category): every part file has a category outside the six; set "
            "parts.unknown_category: ignore to leave those detections out") in text


def test_read_part_file_ignore_counts_what_it_left_out(tmp_path):
    from collections import Counter as C

    f = tmp_path / "p.json"
    f.write_text(json.dumps([{"category": "license_plate", "mask": grid(slice(0, 2), slice(0, 2))},
                             {"category": "roof", "mask": grid(slice(0, 3), slice(0, 24))},
                             {"category": "bumper", "mask": grid(slice(0, 2), slice(0, 2))}]))
    assert read_part_file(f).startswith("detection 0: unknown part category 'license_plate'")
    seen = C()
    parts = read_part_file(f, "ignore", seen)
    assert set(parts) == {"roof"} and seen == {"license_plate": 1, "bumper": 1}
