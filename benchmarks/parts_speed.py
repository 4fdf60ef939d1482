"""Parts stage speed per region source, and the training loader's throughput (prints, no asserts).

- annotations / prior: T2I-VeRW size (15,000 images, two captions each, a 24 x 24 grid per
  visible part as in its part files), including writing the compact parts.json; goal < 60 s.
- groundingdino: a tiny randomly initialised GroundingDINO on CPU (a stand-in that exercises
  batching, post-processing and the cache; real Swin-T/B weights are far slower: run on a GPU),
  first run and cached rerun.
- loader: ImageTextDataset construction (decodes every image into the cache, builds all masks)
  and then samples/s through DataLoader + collate, against indexing pre-built tensors.

    .venv/bin/python benchmarks/parts_speed.py [--images 15000] [--loader-images 2000]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pfcvr.data.categories import PART_CATEGORIES  # noqa: E402
from pfcvr.data.parts import build_parts  # noqa: E402

GOAL_IMAGES, GOAL_SECONDS = 15000, 60     # T2I-VeRW size; below 1.0 in "time / goal" meets it
CAPTIONS = ["A white sedan with dark tinted windows, black alloy wheels and a roof rack.",
            "The car has round headlights; its side mirrors are red and the doors carry a stripe."]


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    """T2I-VeRW-like records: 4-6 parts per image, each a 24 x 24 grid from a random box."""
    rng = np.random.default_rng(seed)
    records = []
    centres = (np.arange(24) + 0.5) / 24
    for i in range(n):
        parts = {}
        for cat in PART_CATEGORIES:
            if rng.random() < 0.2:
                continue
            x0, y0 = rng.uniform(0, 0.6, 2)
            x1, y1 = x0 + rng.uniform(0.1, 0.4), y0 + rng.uniform(0.1, 0.4)
            grid = ((centres[:, None] >= y0) & (centres[:, None] < y1) &
                    (centres[None, :] >= x0) & (centres[None, :] < x1)).astype(int)
            grid[int(min((y0 + y1) / 2, 0.99) * 24), int(min((x0 + x1) / 2, 0.99) * 24)] = 1
            parts[cat] = {"grid": grid.tolist(), "score": float(rng.uniform(0.3, 0.9))}
        records.append({"split": "train", "id": i // 8, "file_path": f"image/{i}.jpg",
                        "captions": [f"{c} Seen near gate {i}." for c in CAPTIONS],  # unique
                        "parts": parts, "view": "front"})
    return records


def bench_source(records: list[dict], source: str) -> None:
    t = time.perf_counter()
    doc, stats = build_parts(records, source)
    build = time.perf_counter() - t
    text = json.dumps(doc, separators=(",", ":"))
    total = time.perf_counter() - t
    goal = GOAL_SECONDS * len(records) / GOAL_IMAGES            # the goal's time for this many
    print(f"  {source:12s} {len(records):6d} images: build {build:6.2f} s, + JSON "
          f"({len(text) / 1e6:.0f} MB) {total:6.2f} s -> {len(records) / total:8.0f} images/s; "
          f"time / goal {total / goal:.3f} [goal: {GOAL_IMAGES:,} in < {GOAL_SECONDS} s]")


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        path = folder / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
        records.append({"split": "train", "id": i // 4, "file_path": f"{i}.png",
                        "captions": CAPTIONS,
                        "parts": {"wheels": {"box": [0.1, 0.6, 0.4, 0.95]},
                                  "windows": {"box": [0.3, 0.2, 0.7, 0.45]}}})
    (folder / "manifest.json").write_text(json.dumps(records))
    (folder / "meta.json").write_text(json.dumps({"images_root": "images"}))
    return records


def bench_grounding(tmp: Path, n: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.test_grounding import save_tiny_grounding_dino, settings

    from pfcvr.data.grounding import GroundingDetector

    folder = tmp / "gd"
    records = write_images(folder, n, 96)
    model = save_tiny_grounding_dino(tmp / "tiny-gd")
    paths = [folder / "images" / r["file_path"] for r in records]
    for label in ("first run", "cached rerun"):
        det = GroundingDetector(settings(model, batch_size=8), cache_dir=tmp / "cache")
        t = time.perf_counter()
        det.detect(paths, progress=False)
        dt = time.perf_counter() - t
        print(f"  groundingdino {label:12s} {n} images: {dt:6.2f} s -> {n / dt:8.1f} images/s "
              f"(tiny random stand-in on CPU; computed {det.stats['computed']})")


def bench_loader(tmp: Path, n: int, size: int = 96, patch: int = 12, batch: int = 32) -> None:
    import torch
    from torch.utils.data import DataLoader

    from pfcvr.data.dataset import ImageTextDataset, load_split
    from pfcvr.model.tokenizer import Tokenizer

    folder = tmp / "loader"
    records = write_images(folder, n, size)
    doc, _ = build_parts(records, "annotations")
    (tmp / "parts.json").write_text(json.dumps(doc))
    data = load_split(folder, tmp / "parts.json", "train")
    tok = Tokenizer.train(CAPTIONS * 10, 600, 48)
    t = time.perf_counter()
    ds = ImageTextDataset(data, tok, size, patch, train=True, hflip=0.5)
    print(f"  loader construction      {len(data)} images: {time.perf_counter() - t:6.2f} s "
          "(decode all images into the cache + vectorised masks)")
    loader = DataLoader(ds, batch_size=batch, shuffle=True, collate_fn=ds.collate)
    for epoch in ("epoch 1", "epoch 2"):
        t = time.perf_counter()
        for _ in loader:
            pass
        dt = time.perf_counter() - t
        print(f"  loader {epoch:17s} {len(ds)} samples: {len(ds) / dt:8.0f} samples/s")
    # in-memory reference: index pre-built batch tensors (what a loader can at best approach)
    g = size // patch
    imgs = torch.randn(len(ds), 3, size, size)
    ids = tok([ds.captions[i] for i in range(len(ds))])
    masks = torch.zeros(len(ds), 6, g * g, dtype=torch.bool)
    t = time.perf_counter()
    for perm in torch.randperm(len(ds)).split(batch):
        _ = (imgs[perm], ids[perm], masks[perm])
    dt = time.perf_counter() - t
    print(f"  in-memory tensors        {len(ds)} samples: {len(ds) / dt:8.0f} samples/s "
          "(indexing only; a training step on top of either costs far more)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=15000)
    ap.add_argument("--gdino-images", type=int, default=32)
    ap.add_argument("--loader-images", type=int, default=2000)
    args = ap.parse_args()
    print(f"parts speed (cpu cores: {os.cpu_count()})")
    records = synthetic_records(args.images)
    for source in ("annotations", "prior"):
        bench_source(records, source)
    with tempfile.TemporaryDirectory() as tmp:
        bench_grounding(Path(tmp), args.gdino_images)
        bench_loader(Path(tmp), args.loader_images)


if __name__ == "__main__":
    main()
