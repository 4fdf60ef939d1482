"""The prepare pipeline: a data source -> ``data/prepared`` + stats + a sample figure.

``data/prepared`` is written as a whole through :func:`pfcvr.io.atomic_dir`: an interrupted run
leaves the previous complete folder (or none), never a half-written one. It holds

- ``manifest.json``: the canonical records (DESIGN.md), one per line;
- ``meta.json``: ``{source, images_root, num_records, splits, ...}``. ``images_root`` is
  ``"images"`` (relative to ``data/prepared``) for the synthetic benchmark, and the absolute
  dataset folder for real sources, whose images are not copied;
- ``images/`` (synthetic only).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from pfcvr.config import PART_CATEGORIES, Params, to_dict
from pfcvr.data import synthetic
from pfcvr.data.manifest import save_manifest, split_summary, validate_records
from pfcvr.data.oracle import attribute_oracle, has_ground_truth
from pfcvr.data.readers import read_source
from pfcvr.io import atomic_dir, write_json

PREPARED = Path("data/prepared")
STATS = Path("reports/data/stats.json")
FIGURE = Path("reports/figures/data_samples.png")
N_SAMPLES = 12


def compute_stats(records: list[dict], skipped: dict[str, int], source: str) -> dict:
    """Counts per split, caption length, part coverage, skipped records (+ synthetic extras)."""
    splits = split_summary(records)
    words = np.array([len(c.split()) for r in records for c in r["captions"]] or [0])
    coverage = {c: round(sum(1 for r in records if (r.get("parts") or {}).get(c)) / max(1, len(records)), 4)
                for c in PART_CATEGORIES}
    stats = {
        "source": source,
        "splits": splits,
        "total": {k: sum(s[k] for s in splits.values()) for k in ("ids", "images", "captions")},
        "caption_words": {"mean": round(float(words.mean()), 2), "max": int(words.max())},
        "part_coverage": coverage,
        "images_with_parts": round(sum(1 for r in records if r.get("parts")) / max(1, len(records)), 4),
        "skipped": {"total": 0, **skipped},
    }
    if has_ground_truth(records):
        facts = [f for r in records for cap in r["caption_facts"] for f in cap]
        n_caps = sum(len(r["caption_facts"]) for r in records)
        part_facts = [f for f in facts if f["category"] in PART_CATEGORIES]
        stats["views"] = {v: sum(1 for r in records if r.get("view") == v) for v in synthetic.VIEWS}
        stats["part_facts_per_caption"] = round(len(part_facts) / max(1, n_caps), 3)
        stats["caption_mistake_rate"] = round(sum(f["mistake"] for f in facts) / max(1, len(facts)), 4)
    return stats


def sample_items(records: list[dict], images_root: Path, n: int = N_SAMPLES) -> list[dict]:
    """Up to ``n`` records for the sample figure: training images, views spread, ids distinct."""
    pool = [r for r in records if r["split"] == "train"] or records
    views = sorted({r.get("view") for r in pool if r.get("view")}, key=str) or [None]
    per_view = -(-n // len(views))
    chosen: list[int] = []
    ids: set = set()
    for v in views:  # the same number of each view, spread over the pool, one image per id
        of_view = [i for i, r in enumerate(pool) if v is None or r.get("view") == v]
        picked = 0
        for j in np.linspace(0, len(of_view) - 1, num=min(len(of_view), 4 * per_view)).astype(int):
            if picked < per_view and pool[of_view[j]]["id"] not in ids:
                chosen.append(of_view[j])
                ids.add(pool[of_view[j]]["id"])
                picked += 1
    items = []
    for i in sorted(chosen)[:n]:
        r = pool[i]
        with Image.open(images_root / r["file_path"]) as im:
            img = np.asarray(im.convert("RGB"))
        label = f"{r['split']} · id {r['id']}" + (f" · {r['view']}" if r.get("view") else "")
        parts = r.get("parts") or {}
        caption = r["captions"][0]
        wrong = [f"{f['attribute'] if f['category'] == 'global' else f['category'] + ' ' + f['attribute']}"
                 for f in (r.get("caption_facts") or [[]])[0] if f.get("mistake")]
        if wrong:  # show the synthetic witness's mistakes, so nobody takes them for label bugs
            caption += f" [witness mistake: {', '.join(wrong)}]"
        items.append({"image": img, "caption": caption, "label": label,
                      "parts": {c: p["box"] for c, p in parts.items()},
                      "grids": {c: p["grid"] for c, p in parts.items() if p.get("grid")}})
    return items


def prepare(params: Params, out_dir: str | Path = PREPARED, stats_path: str | Path = STATS,
            figure_path: str | Path = FIGURE, workers: int | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict:
    """Run the prepare stage's work for ``params``; returns the stats (also written to
    ``stats_path``). ``progress(done, total)`` is called while synthetic images are rendered."""
    from pfcvr import viz

    data = params.data
    # Every data setting is resolved here and recorded in meta.json, whatever the source.
    settings = {"source": data.source, "root": data.root, "annotations": data.annotations,
                "val_fraction": data.val_fraction, "on_error": data.on_error, "seed": params.seed}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if settings["source"] == "synthetic":
            cfg = data.synthetic
            total = cfg.n_ids * cfg.images_per_id
            records = synthetic.generate(cfg, settings["seed"], tmp / "images", workers,
                                         progress and (lambda done: progress(done, total)))
            images_dir, skipped = tmp / "images", {}
            meta = {"source": "synthetic", "images_root": "images",
                    "synthetic": to_dict(cfg), "vocabulary": synthetic.attribute_table()}
        else:
            res = read_source(settings["source"], settings["root"], settings["annotations"],
                              val_fraction=settings["val_fraction"], seed=settings["seed"],
                              on_error=settings["on_error"], workers=workers)
            records, images_dir, skipped = res.records, res.images_root, res.skipped
            meta = {"source": settings["source"], "images_root": str(res.images_root),
                    "annotations": str(res.annotations), "val_carved_ids": res.val_carved_ids,
                    "val_is_test": res.val_is_test}
        # The records come from our own generator/reader: a problem here is a bug, not bad input.
        validate_records(records, f"prepared manifest ({settings['source']})").raise_if_any()
        meta.update(num_records=len(records), splits=split_summary(records), skipped=skipped,
                    settings=settings)
        save_manifest(records, tmp / "manifest.json")
        write_json(tmp / "meta.json", meta)
        items = sample_items(records, images_dir)   # read now: tmp is renamed on exit
    stats = compute_stats(records, skipped, settings["source"])
    stats.update(attribute_oracle(records, split="test", seed=settings["seed"]))
    write_json(stats_path, stats)
    viz.data_samples_figure(items, figure_path, title=f"{settings['source']}: {len(records)} images, "
                            f"{stats['total']['ids']} ids (boxes = part annotations)")
    return stats
