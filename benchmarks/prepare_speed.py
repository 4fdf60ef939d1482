"""How fast is the prepare stage? Synthetic generation and real-format conversion per 1,000 images.

    .venv/bin/python benchmarks/prepare_speed.py            # quick: 1,200 synthetic, 2,000 real
    .venv/bin/python benchmarks/prepare_speed.py --full     # + the T2I-VeRW-size set (1,800 ids)

Prints seconds per 1,000 images for 1 process and for all cores, their ratio, and the projected
time of the T2I-VeRW-size synthetic set (about 15,000 images; target: under 2 minutes on 2 cores).
Timings depend on the machine's load; nothing here is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pfcvr.config import load_params
from pfcvr.data import synthetic
from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.readers import read_source

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def synthetic_seconds(n_ids: int, per_id: int, workers: int, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to generate n_ids x per_id images with ``workers`` processes."""
    params = load_params(ROOT / "params.yaml", overrides={
        "data.synthetic.n_ids": n_ids, "data.synthetic.images_per_id": per_id})
    shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.perf_counter(), cpu_seconds()
    synthetic.generate(params.data.synthetic, 0, out, workers=workers)
    return time.perf_counter() - t0, cpu_seconds() - c0


def make_real_fixture(root: Path, n: int, size: int = 128) -> None:
    """A T2I-VeRW-layout folder: n JPEG images, a part file each, one annotation JSON."""
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        rel = f"image/{i // 8:05d}/{i:06d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / rel, quality=90)
        dets = []
        for cat in PART_CATEGORIES[: 1 + i % 6]:
            m = np.zeros((24, 24), dtype=int)
            m[4:10, 3 + i % 8: 12 + i % 8] = 1
            dets.append({"category": cat, "mask": m.tolist(), "score": 0.5})
        box = f"boxes\\{i:06d}.json"                      # Windows separators, as published
        (root / "boxes").mkdir(exist_ok=True)
        (root / "boxes" / f"{i:06d}.json").write_text(json.dumps(dets))
        recs.append({"split": "train" if i // 8 % 10 < 7 else "val", "id": i // 8, "file_path": rel,
                     "captions": ["a white sedan with black wheels"], "boxes": box, "prompt": "car"})
    (root / "annotations.json").write_text(json.dumps(recs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="also time the T2I-VeRW-size synthetic set")
    ap.add_argument("--real", type=int, default=2000, help="images in the real-format fixture")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    print(f"load average before: {os.getloadavg()[0]:.1f} on {cores} cores (wall times grow with it; "
          "CPU seconds do not)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = 200 * 6
        (one, one_cpu), (many, many_cpu) = (synthetic_seconds(200, 6, w, tmp / f"s{w}") for w in (1, cores))
        print(f"synthetic, {n} images at 96 px: 1 process {1000 * one / n:.2f} s/1000 images "
              f"(CPU {1000 * one_cpu / n:.2f} s), {cores} processes {1000 * many / n:.2f} s/1000 images "
              f"(wall speed-up x{one / many:.2f})")
        print(f"  projected T2I-VeRW size (14,400 images) on {cores} cores: {14.4 * 1000 * many / n:.0f} s "
              f"at this load, {14.4 * 1000 * many_cpu / n / cores:.0f} s on idle cores")
        if args.full:
            full, full_cpu = synthetic_seconds(1800, 8, cores, tmp / "s3")
            print(f"synthetic, T2I-VeRW size (1,800 ids x 8 = 14,400 images) on {cores} cores: "
                  f"{full:.1f} s wall, {full_cpu:.1f} CPU s ({full_cpu / cores:.1f} s on idle cores; "
                  "target < 120 s)")
        make_real_fixture(tmp / "real", args.real)
        for workers in (1, cores):
            t0, c0 = time.perf_counter(), cpu_seconds()
            res = read_source("t2i-verw", tmp / "real", "annotations.json", val_fraction=0.15, seed=0,
                              workers=workers)
            sec, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            print(f"real format (t2i-verw, {len(res.records)} JPEG 128 px + part files), {workers} "
                  f"process(es): {1000 * sec / args.real:.2f} s/1000 images (CPU {1000 * cpu / args.real:.2f} s)")


if __name__ == "__main__":
    main()
