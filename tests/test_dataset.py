"""The torch datasets: split loading, mask rasterisation, flips, batches, determinism."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.dataset import (CLIP_MEAN, CLIP_STD, ImageDataset, ImageStore, ImageTextDataset,
                                collate, load_split, part_masks, pid_map, rasterize_boxes,
                                resample_grids)
from pfcvr.model.tokenizer import Tokenizer
from tests.test_parts import COLORS, make_fixture, make_records, write_parts

S, PATCH, G = 48, 6, 8
WHEELS = PART_CATEGORIES.index("wheels")


@pytest.fixture()
def split_data(tmp_path):
    prepared = make_fixture(tmp_path, size=S)
    return load_split(prepared, write_parts(prepared), "train")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([r for rec in make_records() for r in rec["captions"]], 600, 32)


# ----------------------------------------------------------------------------------------------
# rasterisation
# ----------------------------------------------------------------------------------------------

def cells(mask: np.ndarray) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in zip(*np.nonzero(mask))}


def test_rasterize_hand_computed_boxes():
    # cells of a 4 x 4 grid are 0.25 wide
    assert cells(rasterize_boxes([0.0, 0.0, 0.5, 0.5], 4)) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    # covers 0.6 x 0.6 of (0,0) = 0.36 < 1/2; (0,1): 1.0 x 0.6 = 0.6 >= 1/2; (1,1): 0.4
    assert cells(rasterize_boxes([0.1, 0.1, 0.6, 0.35], 4)) == {(0, 1)}
    # exactly half of cells (0,0) and (0,1) -> both marked ("at least half")
    assert cells(rasterize_boxes([0.125, 0.0, 0.375, 0.25], 4)) == {(0, 0), (0, 1)}
    # smaller than a cell: only the cell holding the centre (0.25, 0.25 -> row 1, col 1)
    assert cells(rasterize_boxes([0.2, 0.2, 0.3, 0.3], 4)) == {(1, 1)}
    assert cells(rasterize_boxes([0.9, 0.0, 1.0, 0.05], 4)) == {(0, 3)}
    assert rasterize_boxes([0.0, 0.0, 1.0, 1.0], 4).all()
    # batched: [2, 3, 4] boxes -> [2, 3, 4, 4] masks, each equal to the single-box result
    boxes = np.random.default_rng(0).uniform(0, 0.5, (2, 3, 4))
    boxes[..., 2:] += 0.5
    batched = rasterize_boxes(boxes, 4)
    assert batched.shape == (2, 3, 4, 4)
    for i in range(2):
        for j in range(3):
            assert (batched[i, j] == rasterize_boxes(boxes[i, j], 4)).all()


def test_resample_grid_identity_upsampling_and_downsampling():
    rng = np.random.default_rng(0)
    g = rng.random((4, 4)) < 0.5
    assert (resample_grids(g[None], 4)[0] == g).all()
    # upsampling is nearest-neighbour
    assert (resample_grids(g[None], 8)[0] == np.kron(g, np.ones((2, 2), bool))).all()
    # 24 -> 8: a target cell is marked when >= half of its 3 x 3 source cells are (5 of 9)
    src = np.zeros((24, 24), bool)
    src[0:3, 0:3] = True                          # 9/9
    src[0:2, 3:6] = True                          # 6/9
    src[0:1, 6:9] = True                          # 3/9 -> no
    src[3, 3] = True                              # 1/9 -> no
    out = resample_grids(src[None], 8)[0]
    assert cells(out) == {(0, 0), (0, 1)}
    # a part thinner than half a target cell keeps its best-covered cell
    thin = np.zeros((24, 24), bool)
    thin[10, 4:9] = True                          # 2/9 of cell (3, 1), 3/9 of (3, 2)
    assert cells(resample_grids(thin[None], 8)[0]) == {(3, 2)}
    assert not resample_grids(np.zeros((1, 24, 24), bool), 8).any()


def test_part_masks_use_grid_over_box_and_mark_missing_parts_absent():
    grid = np.zeros((4, 4), int)
    grid[3, 0] = 1
    entries = [{"regions": {"windows": {"box": [0.0, 0.0, 0.5, 0.5]},
                            "wheels": {"box": [0.0, 0.0, 1.0, 1.0], "grid": grid.tolist()},
                            "doors": None}},
               {"regions": dict.fromkeys(PART_CATEGORIES)}]
    masks, present = part_masks(entries, 4)
    assert masks.shape == (2, 6, 4, 4) and masks.dtype == torch.bool
    assert present.tolist() == [[True, False, True, False, False, False], [False] * 6]
    assert cells(masks[0, 0].numpy()) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert cells(masks[0, WHEELS].numpy()) == {(3, 0)}
    assert not masks[0, 1].any() and not masks[1].any()


# ----------------------------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------------------------

def test_load_split_selects_records_and_resolves_the_images_root(tmp_path):
    prepared = make_fixture(tmp_path)
    parts = write_parts(prepared)
    manifest = json.loads((prepared / "manifest.json").read_text())
    for split in ("train", "val", "test"):
        data = load_split(prepared, parts, split)
        expected = [i for i, r in enumerate(manifest) if r["split"] == split]
        assert data.indices == expected and len(data) == len(expected)
        assert data.ids == [manifest[i]["id"] for i in expected]
        assert all(p.is_file() for p in data.paths)
        assert [e["file_path"] for e in data.parts] == [r["file_path"] for r in data.records]
    # an absolute images root in meta.json
    meta = json.loads((prepared / "meta.json").read_text())
    moved = tmp_path / "elsewhere"
    (prepared / "images").rename(moved)
    (prepared / "meta.json").write_text(json.dumps({**meta, "images_root": str(moved)}))
    assert all(p.is_file() for p in load_split(prepared, parts, "train").paths)


def test_load_split_rejects_misaligned_parts(tmp_path):
    prepared = make_fixture(tmp_path)
    parts = write_parts(prepared)
    doc = json.loads(parts.read_text())
    doc["images"][3]["file_path"] = "other.png"
    parts.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="entry 3 is for 'other.png'.*dvc repro parts"):
        load_split(prepared, parts, "train")
    doc["images"] = doc["images"][:-1]
    parts.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="7 image entries for 8 manifest records"):
        load_split(prepared, parts, "train")
    with pytest.raises(ValueError, match="split 'dev'"):
        load_split(prepared, parts, "dev")


def test_pid_map_is_contiguous_in_sorted_order():
    assert pid_map([107, 3, 50, 3, 107]) == {3: 0, 50: 1, 107: 2}


def test_split_captions_table(split_data):
    texts, pids, index = split_data.captions()
    assert len(texts) == 2 * len(split_data) == len(pids) == len(index)
    assert texts[:2] == split_data.records[0]["captions"]
    assert pids.tolist()[:2] == [split_data.ids[0]] * 2 and index.tolist()[:4] == [0, 0, 1, 1]


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------

def test_image_text_dataset_pairs_and_labels(split_data, tok):
    mapping = pid_map(split_data.ids)
    ds = ImageTextDataset(split_data, tok, S, PATCH, train=True, hflip=0.0, pid_map=mapping)
    assert len(ds) == sum(len(r["captions"]) for r in split_data.records)
    s = ds[3]
    assert s["image_index"] == 1 and s["caption"] == split_data.records[1]["captions"][1]
    assert int(s["pid"]) == mapping[split_data.ids[1]]
    with pytest.raises(ValueError, match="pid_map has no label for identity"):
        ImageTextDataset(split_data, tok, S, PATCH, train=True, pid_map={0: 0})
    with pytest.raises(ValueError, match="multiple of model.patch_size"):
        ImageTextDataset(split_data, tok, 50, PATCH, train=True)


def to_uint8(image_chw: torch.Tensor) -> np.ndarray:
    """Undo the CLIP normalisation: float [3, S, S] -> uint8 [S, S, 3]."""
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((image_chw * std + mean) * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _mask_hits_colour(image_chw: torch.Tensor, mask_flat: torch.Tensor, colour) -> float:
    """Fraction of marked cells whose centre pixel has ``colour``."""
    img = to_uint8(image_chw)
    m = mask_flat.reshape(G, G).numpy()
    hits = [tuple(img[r * PATCH + PATCH // 2, c * PATCH + PATCH // 2]) == colour
            for r, c in zip(*np.nonzero(m))]
    return float(np.mean(hits))


def test_part_masks_follow_a_horizontal_flip(split_data, tok):
    plain = ImageTextDataset(split_data, tok, S, PATCH, train=True, hflip=0.0)
    flipped = ImageTextDataset(split_data, tok, S, PATCH, train=True, hflip=1.0, flip_masks=True)
    buggy = ImageTextDataset(split_data, tok, S, PATCH, train=True, hflip=1.0, flip_masks=False)
    a, b, c = plain[0], flipped[0], buggy[0]
    assert torch.equal(b["image"], a["image"].flip(-1)) and torch.equal(c["image"], b["image"])
    ma, mb = a["part_masks"].reshape(6, G, G), b["part_masks"].reshape(6, G, G)
    assert torch.equal(mb, ma.flip(-1)) and not torch.equal(mb, ma)
    assert torch.equal(c["part_masks"], a["part_masks"])  # the official bug: masks stay put
    # the flipped wheel mask still sits on the (black) wheel pixels; the unflipped one does not
    wheel = COLORS["wheels"]
    assert _mask_hits_colour(a["image"], a["part_masks"][WHEELS], wheel) == 1.0
    assert _mask_hits_colour(b["image"], b["part_masks"][WHEELS], wheel) == 1.0
    assert _mask_hits_colour(c["image"], c["part_masks"][WHEELS], wheel) == 0.0


def test_no_flip_when_not_training(split_data, tok):
    ds = ImageTextDataset(split_data, tok, S, PATCH, train=False, hflip=1.0)
    plain = ImageTextDataset(split_data, tok, S, PATCH, train=True, hflip=0.0)
    assert torch.equal(ds[0]["image"], plain[0]["image"])
    assert torch.equal(ds[0]["part_masks"], plain[0]["part_masks"])


def test_batch_contract_shapes_dtypes_and_normalisation(split_data, tok):
    ds = ImageTextDataset(split_data, tok, S, PATCH, train=True, hflip=0.5,
                          pid_map=pid_map(split_data.ids))
    batch = next(iter(DataLoader(ds, batch_size=5, collate_fn=ds.collate)))
    assert set(batch) == {"images", "caption_ids", "pids", "part_masks", "part_present", "image_index"}
    assert batch["images"].shape == (5, 3, S, S) and batch["images"].dtype == torch.float32
    assert batch["caption_ids"].shape == (5, tok.context_length)
    assert batch["caption_ids"].dtype == torch.long
    assert (batch["caption_ids"][:, 0] == tok.sot_id).all()
    assert batch["pids"].dtype == torch.long and batch["pids"].tolist() == [0, 0, 0, 0, 1]
    assert batch["part_masks"].shape == (5, 6, G * G) and batch["part_masks"].dtype == torch.bool
    assert batch["part_present"].shape == (5, 6) and batch["part_present"].dtype == torch.bool
    assert batch["image_index"].tolist() == [0, 0, 1, 1, 2]
    # present parts have a non-empty mask, absent ones an empty mask
    assert torch.equal(batch["part_masks"].any(-1), batch["part_present"])
    # the background grey (200) after CLIP normalisation, at the image's centre-bottom
    expected = torch.tensor([(200 / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    assert torch.allclose(batch["images"][0, :, S - 6, S // 2], expected, atol=1e-6)
    # the whole image round-trips to the decoded pixels (or their mirror image: hflip 0.5)
    back = to_uint8(batch["images"][2])
    assert np.array_equal(back, ds.store[1]) or np.array_equal(back, ds.store[1][:, ::-1])
    # collate also accepts uint8 images (normalised there), e.g. from a custom dataset
    plain = ImageTextDataset(split_data, tok, S, PATCH, train=False)
    raw = {**plain[0], "image": torch.from_numpy(plain.store[0].copy()).permute(2, 0, 1)}
    assert torch.allclose(collate([raw])["images"][0], plain[0]["image"], atol=1e-6)


def test_collate_tokenises_or_uses_the_pretokenised_ids(split_data, tok):
    with_tok = ImageTextDataset(split_data, tok, S, PATCH, train=False)
    without = ImageTextDataset(split_data, None, S, PATCH, train=False)
    samples = [with_tok[i] for i in range(6)]
    assert torch.equal(collate(samples)["caption_ids"],
                       tok([s["caption"] for s in samples]))            # pre-tokenised rows
    plain = [without[i] for i in range(6)]
    assert "caption_ids" not in plain[0]
    assert torch.equal(collate(plain, tok)["caption_ids"], collate(samples)["caption_ids"])
    with pytest.raises(ValueError, match="need a tokenizer"):
        collate(plain)


def _run_epoch(ds, seed: int, workers: int = 0) -> list[dict]:
    torch.manual_seed(seed)
    loader = DataLoader(ds, batch_size=4, shuffle=True, collate_fn=ds.collate, num_workers=workers,
                        generator=torch.Generator().manual_seed(seed))
    return list(loader)


def _flips(ds, batches) -> list[bool]:
    """Per sample whether it was flipped (the orange marker sits at the left when not)."""
    return [bool(b["images"][i, 0, 2, 2] < b["images"][i, 0, 2, S - 3])
            for b in batches for i in range(len(b["images"]))]


def test_determinism_under_a_seeded_generator(split_data, tok):
    ds = ImageTextDataset(split_data, tok, S, PATCH, train=True, hflip=0.5)
    one, two = _run_epoch(ds, 0), _run_epoch(ds, 0)
    for a, b in zip(one, two):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    flips = _flips(ds, one)
    assert 0 < sum(flips) < len(flips)            # both outcomes occur at p = 0.5
    other = _run_epoch(ds, 1)
    assert any(not torch.equal(a["image_index"], b["image_index"]) for a, b in zip(one, other)) \
        or _flips(ds, other) != flips


def test_determinism_with_worker_processes(split_data, tok):
    ds = ImageTextDataset(split_data, tok, S, PATCH, train=True, hflip=0.5)
    one, two = _run_epoch(ds, 3, workers=2), _run_epoch(ds, 3, workers=2)
    for a, b in zip(one, two):
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_image_dataset_for_the_gallery(split_data):
    ds = ImageDataset(split_data, S, PATCH)
    assert len(ds) == len(split_data)
    batch = collate([ds[i] for i in range(len(ds))])
    assert set(batch) == {"images", "pids", "part_masks", "part_present", "image_index"}
    assert batch["pids"].tolist() == split_data.ids             # raw identities
    assert batch["image_index"].tolist() == list(range(len(ds)))
    text = ImageTextDataset(split_data, None, S, PATCH, train=False)
    assert torch.equal(ds[1]["image"], text[2]["image"])         # no flip, same pixels


def test_image_store_squashes_and_decodes_once(tmp_path):
    path = tmp_path / "wide.png"
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, :30] = 255                                            # left half white
    Image.fromarray(arr).save(path)
    store = ImageStore([path], 32)
    assert store.cached
    img = store[0]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert img[:, :14].min() == 255 and img[:, 18:].max() == 0  # squashed, not cropped
    path.unlink()                                                # cached: no second decode
    assert np.array_equal(store[0], img)
    uncached = ImageStore([path], 32, cache=False)
    with pytest.raises(OSError, match="wide.png"):
        uncached[0]


def test_split_shares_one_store_per_image_size(split_data, tok):
    a = ImageTextDataset(split_data, tok, S, PATCH, train=True)
    b = ImageDataset(split_data, S, PATCH)
    assert a.store is b.store
    assert ImageDataset(split_data, 24, PATCH).store is not a.store


def test_captions_cut_by_the_context_length_are_counted_and_said(split_data):
    """Issue 12 (silent truncation): every caption of the train fixture (8: two ids x two images x
    two captions) needs more than 8 tokens; the dataset says so once and counts them."""
    import warnings

    captions = [c for rec in make_records() for c in rec["captions"]]
    short = Tokenizer.train(captions, 600, 8)
    with pytest.warns(UserWarning, match=r"^8 of 8 captions of split 'train' are longer than the "
                                         r"model's context length of 8 tokens \(longest \d+\) and "
                                         r"are cut"):
        ds = ImageTextDataset(split_data, short, S, PATCH, train=False)
    assert ds.truncated_captions == 8
    roomy = Tokenizer.train(captions, 600, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ImageTextDataset(split_data, roomy, S, PATCH, train=False).truncated_captions == 0
