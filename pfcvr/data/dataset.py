"""Torch datasets for training and evaluation, and the batch collate function.

- :func:`load_split` reads the manifest, its meta and the aligned parts document for one split.
- :class:`ImageTextDataset`: one sample per (image, caption) pair (training, and text queries).
- :class:`ImageDataset`: one sample per image (gallery encoding, no flip).
- :func:`collate` builds the batch contract: ``images`` float [B, 3, S, S] (CLIP-normalised,
  after any flip), ``caption_ids`` long [B, L], ``pids`` long [B], ``part_masks`` bool
  [B, 6, G*G] (row-major patch grid in the frame of the possibly flipped image), ``part_present``
  bool [B, 6], ``image_index`` long [B].

Part masks (rasterised in pfcvr/data/grids.py: a box marks every patch cell it covers by at
least half and the cell holding its centre; a grid is resampled by the same area rule) are
built once per split for all images (vectorised) and flipped together with the image when
``flip_masks`` (false reproduces the official bug).
Images are decoded once (PIL), squashed to S x S and kept in memory when the split's decoded
size stays under :data:`CACHE_LIMIT_BYTES`; the datasets then decode them all at construction
(threads), so DataLoader workers forked later share one copy.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.grids import part_masks, rasterize_boxes, resample_grids  # noqa: F401
from pfcvr.data.manifest import images_root
from pfcvr.runtime.atomic import read_json

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CACHE_LIMIT_BYTES = 2 * 1024 ** 3
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------------------------
# Split data
# ----------------------------------------------------------------------------------------------

@dataclass
class SplitData:
    """The records of one split with their aligned parts entries.

    ``indices``: positions in the manifest; ``ids``: raw identity of each record; ``source``:
    the dataset it was prepared from (``meta.json``'s ``source``, "" when unknown).
    """
    split: str
    records: list[dict]
    parts: list[dict]
    images_root: Path
    ids: list[int]
    indices: list[int]
    source: str = ""
    _stores: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def paths(self) -> list[Path]:
        return [self.images_root / r["file_path"] for r in self.records]

    def image_store(self, image_size: int) -> "ImageStore":
        """One shared decoded-image cache per image size (used by both datasets)."""
        if image_size not in self._stores:
            self._stores[image_size] = ImageStore(self.paths, image_size)
        return self._stores[image_size]

    def captions(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Every caption of the split (query list): texts, raw ids long [Q], image index long [Q]."""
        texts, pids, index = [], [], []
        for i, (rec, pid) in enumerate(zip(self.records, self.ids)):
            for c in rec["captions"]:
                texts.append(c)
                pids.append(pid)
                index.append(i)
        return texts, torch.tensor(pids, dtype=torch.long), torch.tensor(index, dtype=torch.long)


def load_split(prepared_dir: str | Path, parts_path: str | Path, split: str) -> SplitData:
    """Records of ``split`` from ``<prepared_dir>/manifest.json`` with their parts entries.

    Raises ValueError for a bad split, manifest or parts file, and
    :class:`pfcvr.runtime.output_set.IncompleteOutputs` while the prepare or parts stage's
    output set is half-published (a run killed while renaming its outputs into place)."""
    from pfcvr.runtime.output_set import require_whole

    if split not in SPLITS:
        raise ValueError(f"split {split!r}: must be one of {', '.join(SPLITS)}")
    prepared_dir = Path(prepared_dir)
    require_whole(prepared_dir, "prepare")
    require_whole(parts_path, "parts")
    manifest = read_json(prepared_dir / "manifest.json")
    meta_path = prepared_dir / "meta.json"
    meta = read_json(meta_path) if meta_path.is_file() else {}
    doc = read_json(parts_path)
    if not isinstance(manifest, list):
        raise ValueError(f"{prepared_dir / 'manifest.json'}: must be a JSON list of records")
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list) or len(images) != len(manifest):
        raise ValueError(f"{parts_path}: has {len(images) if isinstance(images, list) else 'no'} "
                         f"image entries for {len(manifest)} manifest records; rerun the parts "
                         "stage (`dvc repro parts`)")
    if list(doc.get("categories", [])) != list(PART_CATEGORIES):
        raise ValueError(f"{parts_path}: categories {doc.get('categories')} differ from "
                         f"{list(PART_CATEGORIES)}")
    records, parts, ids, indices = [], [], [], []
    first: dict[Any, int] = {}
    for i, rec in enumerate(manifest):   # an image listed twice would be ranked twice
        fp = rec.get("file_path") if isinstance(rec, dict) else None
        if fp in first:
            raise ValueError(f"manifest record {i} lists image {fp!r} again (also record "
                             f"{first[fp]}); rerun the prepare stage (`dvc repro prepare`), "
                             "which merges the records of one image")
        first[fp] = i
    for i, (rec, ent) in enumerate(zip(manifest, images)):
        if ent.get("file_path") != rec.get("file_path"):
            raise ValueError(f"{parts_path}: entry {i} is for {ent.get('file_path')!r} but manifest "
                             f"record {i} is {rec.get('file_path')!r}; rerun `dvc repro parts`")
        if rec.get("split") != split:
            continue
        try:
            pid = int(rec["id"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"manifest record {i} ({rec.get('file_path')!r}): bad or missing "
                             f"integer `id` {rec.get('id')!r}") from None
        records.append(rec)
        parts.append(ent)
        ids.append(pid)
        indices.append(i)
    return SplitData(split, records, parts, images_root(prepared_dir, meta), ids, indices,
                     source=str(meta.get("source", "")) if isinstance(meta, dict) else "")


def pid_map(ids: list[int]) -> dict[int, int]:
    """Contiguous labels 0..C-1 for raw identities, in sorted raw-id order (as the official)."""
    return {pid: k for k, pid in enumerate(sorted(set(int(i) for i in ids)))}


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------

class ImageStore:
    """Decoded images squashed to size x size, uint8 [S, S, 3]; cached when small enough."""

    def __init__(self, paths: list[Path], size: int, cache: bool | None = None):
        self.paths = list(paths)
        self.size = size
        nbytes = len(self.paths) * size * size * 3
        self.cached = nbytes <= CACHE_LIMIT_BYTES if cache is None else cache
        # np.empty: pages are only touched (and counted) when an image is first decoded.
        self._data = np.empty((len(self.paths), size, size, 3), np.uint8) if self.cached else None
        self._done = np.zeros(len(self.paths), dtype=bool)

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, i: int) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self.paths[i]) as im:
                im = im.convert("RGB")
                if im.size != (self.size, self.size):
                    # Squash (no aspect ratio kept), bilinear as torchvision's Resize.
                    im = im.resize((self.size, self.size), Image.BILINEAR)
                return np.asarray(im)
        except OSError as err:
            raise OSError(f"image {self.paths[i]} (split record {i}): cannot be read ({err})") from None

    def __getitem__(self, i: int) -> np.ndarray:
        if self._data is None:
            return self.decode(i)
        if not self._done[i]:
            self._data[i] = self.decode(i)
            self._done[i] = True
        return self._data[i]

    def preload(self, threads: int | None = None) -> None:
        """Decode every image not yet cached, now (a no-op without the cache).

        The datasets call it at construction: every image is decoded in the first epoch anyway,
        and DataLoader workers forked afterwards share the filled array instead of each
        decoding (and holding) a private copy.
        """
        if self._data is None:
            return
        todo = np.flatnonzero(~self._done).tolist()
        if not todo:
            return
        from concurrent.futures import ThreadPoolExecutor

        def fill(i: int) -> None:
            self._data[i] = self.decode(i)  # PIL decodes with the GIL released

        with ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(fill, todo))
        self._done[todo] = True


_SCALE = 1.0 / (255.0 * torch.tensor(CLIP_STD).view(3, 1, 1))
_SHIFT = -torch.tensor(CLIP_MEAN).view(3, 1, 1) / torch.tensor(CLIP_STD).view(3, 1, 1)


def _to_image(arr: np.ndarray, flip: bool) -> torch.Tensor:
    """uint8 [S, S, 3] -> float [3, S, S], optionally flipped, CLIP-normalised.

    Per sample, in one fused op: (x / 255 - mean) / std = x * scale + shift. A single image is
    below torch's parallel grain, so this never fights the training step for threads.
    """
    if flip:
        arr = arr[:, ::-1]
    chw = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    return torch.addcmul(_SHIFT, chw.float(), _SCALE)


def _grid_size(image_size: int, patch_size: int) -> int:
    if image_size <= 0 or patch_size <= 0 or image_size % patch_size:
        raise ValueError(f"model.image_size={image_size} must be a positive multiple of "
                         f"model.patch_size={patch_size} (part masks live on the patch grid)")
    return image_size // patch_size


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------

class ImageDataset(Dataset):
    """One sample per image: ``{image float [3,S,S] (normalised), pid (raw), part_masks,
    part_present, image_index}``. No flip (gallery encoding)."""

    def __init__(self, split_data: SplitData, image_size: int, patch_size: int):
        self.data = split_data
        self.image_size = image_size
        self.grid_size = _grid_size(image_size, patch_size)
        self.store = split_data.image_store(image_size)
        self.store.preload()
        masks, self.present = part_masks(split_data.parts, self.grid_size)
        self.masks = masks.reshape(len(split_data), len(PART_CATEGORIES), -1)
        self.pids = torch.tensor(split_data.ids, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": _to_image(self.store[i], False), "pid": self.pids[i],
                "part_masks": self.masks[i], "part_present": self.present[i], "image_index": i}


class ImageTextDataset(Dataset):
    """One sample per (image, caption) pair, caption order within image order.

    ``train``: horizontal flip with probability ``hflip`` (torch's global RNG, so
    ``torch.manual_seed`` / DataLoader worker seeding make it reproducible); part masks flip
    with the image when ``flip_masks``. ``pid_map``: raw id -> label (None keeps raw ids).
    Samples: ``{image float [3,S,S] (normalised), caption str, caption_ids long [L] (with a
    tokenizer), pid, part_masks bool [6, G*G], part_present bool [6], image_index}``;
    :func:`collate` (or ``self.collate``) batches them.
    """

    def __init__(self, split_data: SplitData, tokenizer, image_size: int, patch_size: int,
                 train: bool, hflip: float = 0.5, flip_masks: bool = True,
                 pid_map: dict[int, int] | None = None):
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"train.hflip={hflip}: must be in [0, 1]")
        self.data = split_data
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.grid_size = g = _grid_size(image_size, patch_size)
        self.train, self.hflip, self.flip_masks = train, float(hflip), bool(flip_masks)
        self.store = split_data.image_store(image_size)
        self.store.preload()
        masks, self.present = part_masks(split_data.parts, g)
        self.masks = masks                                      # [N, 6, G, G]
        pairs, self.captions = [], []
        for i, rec in enumerate(split_data.records):
            for c in rec["captions"]:
                pairs.append(i)
                self.captions.append(c)
        self.image_of = torch.tensor(pairs, dtype=torch.long)  # [P] image index of each pair
        # Every caption tokenised once (one batch call) instead of once per epoch in collate.
        self.caption_ids = None                                 # [P, L] long
        self.truncated_captions = 0
        if tokenizer is not None and self.captions:
            if hasattr(tokenizer, "encode"):
                self.caption_ids, counts = tokenizer.encode(self.captions)
                self._warn_truncated(counts, tokenizer.context_length)
            else:
                self.caption_ids = tokenizer(self.captions)
        ids = split_data.ids
        if pid_map is not None:
            missing = sorted(set(ids) - set(pid_map))
            if missing:
                raise ValueError(f"pid_map has no label for identity {missing[0]} of split "
                                 f"{split_data.split!r} ({len(missing)} unmapped)")
            ids = [pid_map[p] for p in ids]
        self.pids = torch.tensor(ids, dtype=torch.long)

    def _warn_truncated(self, counts: list[int], context_length: int) -> None:
        """Say how many captions the tokenizer cuts (their end is never seen by the model)."""
        over = [n for n in counts if n > context_length]
        self.truncated_captions = len(over)
        if over:
            warnings.warn(f"{len(over)} of {len(counts)} captions of split {self.data.split!r} "
                          f"are longer than the model's context length of {context_length} "
                          f"tokens (longest {max(over)}) and are cut: their end is not read "
                          f"(raise model.tiny.context_length to at least {max(over)} for the tiny "
                          "and pretrained backbones; the pretrain stage then runs again)",
                          stacklevel=3)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = int(self.image_of[i])
        flip = self.train and self.hflip > 0 and bool(torch.rand(()) < self.hflip)
        masks = self.masks[img]
        if flip and self.flip_masks:
            masks = masks.flip(-1)
        sample = {"image": _to_image(self.store[img], flip), "caption": self.captions[i],
                  "pid": self.pids[img], "part_masks": masks.reshape(len(PART_CATEGORIES), -1),
                  "part_present": self.present[img], "image_index": img}
        if self.caption_ids is not None:
            sample["caption_ids"] = self.caption_ids[i]
        return sample

    def collate(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        return collate(samples, self.tokenizer)


def normalize(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float [..., 3, H, W] with CLIP mean/std."""
    return torch.addcmul(_SHIFT, images_u8.float(), _SCALE)


def collate(samples: list[dict], tokenizer=None) -> dict[str, torch.Tensor]:
    """The batch contract (module doc). Captions are tokenised as one batch, unless the samples
    carry ``caption_ids`` already (ImageTextDataset pre-tokenises when given a tokenizer)."""
    images = torch.stack([s["image"] for s in samples])
    batch = {
        "images": normalize(images) if images.dtype == torch.uint8 else images,
        "pids": torch.stack([torch.as_tensor(s["pid"], dtype=torch.long) for s in samples]),
        "part_masks": torch.stack([s["part_masks"] for s in samples]),
        "part_present": torch.stack([s["part_present"] for s in samples]),
        "image_index": torch.tensor([s["image_index"] for s in samples], dtype=torch.long),
    }
    if "caption_ids" in samples[0]:   # tokenised by the dataset already
        batch["caption_ids"] = torch.stack([s["caption_ids"] for s in samples])
    elif "caption" in samples[0]:
        if tokenizer is None:
            raise ValueError("collate: text samples need a tokenizer (collate(samples, tok))")
        batch["caption_ids"] = tokenizer([s["caption"] for s in samples])
    return batch


__all__ = ["CLIP_MEAN", "CLIP_STD", "ImageDataset", "ImageStore", "ImageTextDataset",
           "SplitData", "collate", "load_split", "normalize", "part_masks",
           "pid_map", "rasterize_boxes", "resample_grids"]
