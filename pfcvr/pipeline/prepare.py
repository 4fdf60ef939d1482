"""The work of the DVC stage ``prepare``: a data source -> ``data/prepared`` + stats + a sample
figure (``stages/prepare.py`` only does the I/O around :func:`prepare`).

The three outputs are one set (:class:`pfcvr.runtime.output_set.OutputSet`): all are written to
temporaries first, then renamed into place together (``data/prepared``, the figure, the stats
last). An interrupted run leaves the previous complete set; a run killed during those renames is
finished by the next one. ``data/prepared`` holds

- ``manifest.json``: the canonical records (:mod:`pfcvr.data.manifest`), one per line, one per
  image (records of one image listed several times are merged, see :mod:`pfcvr.data.duplicates`);
- ``meta.json``: ``{source, images_root, num_records, splits, duplicates, ...}``. ``images_root``
  is ``"images"`` (relative to ``data/prepared``) for the synthetic benchmark; for real sources,
  whose images are not copied, the dataset's image folder: relative to ``data/prepared`` when the
  dataset lies inside the project (the working directory), so the project can be moved, else
  absolute (``pfcvr.data.manifest.stored_location``; ``annotations`` likewise);
- ``images/`` (synthetic only).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from pfcvr import paths
from pfcvr.config import Params, to_dict
from pfcvr.data import synthetic
from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.manifest import save_manifest, split_summary, stored_location, validate_records
from pfcvr.data.oracle import attribute_oracle, has_ground_truth
from pfcvr.data.readers import read_source
from pfcvr.data.sources import SYNTHETIC
from pfcvr.runtime.atomic import write_json
from pfcvr.runtime.output_set import OutputSet

N_SAMPLES = 12
PROGRESS_EVERY_S = 30.0    # off a terminal (DVC logs), one progress line at most this often


NO_DUPLICATES = {"records_merged": 0, "images_merged": 0, "captions_dropped": 0}


def compute_stats(records: list[dict], skipped: dict[str, int], source: str,
                  duplicates: dict[str, int] | None = None,
                  ignored_parts: dict[str, int] | None = None) -> dict:
    """Counts per split, caption length, part coverage, skipped records, merged duplicate
    records, ignored part detections (+ synthetic extras)."""
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
        "duplicates": dict(duplicates or NO_DUPLICATES),
        "ignored_part_detections": dict(ignored_parts or {}),
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


@contextlib.contextmanager
def _render_progress(total: int, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """``done -> None`` updating a tqdm bar of ``total`` images (None when not ``enabled``).

    On a terminal the bar redraws twice a second; elsewhere (a DVC log) it writes a line at
    most every PROGRESS_EVERY_S seconds, so logs stay short.
    """
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    with tqdm(total=total, desc="prepare: rendered", unit="image", file=sys.stderr,
              mininterval=0.5 if tty else PROGRESS_EVERY_S, dynamic_ncols=tty) as bar:
        yield lambda done: bar.update(done - bar.n)


def prepare(params: Params, out_dir: str | Path = paths.PREPARED,
            stats_path: str | Path = paths.DATA_STATS, figure_path: str | Path = paths.DATA_FIGURE,
            workers: int | None = None, progress: bool = False) -> dict:
    """Run the prepare stage's work for ``params``; returns the stats (also written to
    ``stats_path``). ``workers``: processes (default: all cores; the output does not depend on
    it). ``progress``: a tqdm bar on stderr while synthetic images are rendered.

    Raises DataError (bad records of a real source), FileNotFoundError / ValueError (a missing
    or malformed dataset); the three outputs are then left as they were.
    """
    from pfcvr.report.figures.data import data_samples_figure

    data = params.data
    # Every data setting is resolved here and recorded in meta.json, whatever the source.
    settings = {"source": data.source, "root": data.root, "annotations": data.annotations,
                "val_fraction": data.val_fraction, "on_error": data.on_error, "seed": params.seed,
                "unknown_category": params.parts.unknown_category}
    out_dir = Path(out_dir)
    with OutputSet(out_dir) as outs:
        tmp = outs.dir(out_dir)
        outs.file(figure_path)                   # drawn last (optional: outs.figure)
        tmp_stats = outs.file(stats_path)        # published last
        duplicates, ignored = dict(NO_DUPLICATES), {}
        if settings["source"] == SYNTHETIC:
            cfg = data.synthetic
            total = cfg.n_ids * cfg.images_per_id
            with _render_progress(total, progress) as update:
                records = synthetic.generate(cfg, settings["seed"], tmp / "images", workers, update)
            images_dir, skipped = tmp / "images", {}
            meta = {"source": "synthetic", "images_root": "images",
                    "synthetic": to_dict(cfg), "vocabulary": synthetic.attribute_table()}
        else:
            res = read_source(settings["source"], settings["root"], settings["annotations"],
                              val_fraction=settings["val_fraction"], seed=settings["seed"],
                              on_error=settings["on_error"],
                              unknown_category=settings["unknown_category"], workers=workers)
            records, images_dir, skipped = res.records, res.images_root, res.skipped
            duplicates, ignored = res.duplicates, res.ignored_parts
            # A dataset inside the project is recorded relative to out_dir: `mv` of the project
            # must not leave meta.json pointing at the old folder (stored_location).
            meta = {"source": settings["source"],
                    "images_root": stored_location(res.images_root, out_dir),
                    "annotations": stored_location(res.annotations, out_dir),
                    "val_carved_ids": res.val_carved_ids, "val_is_test": res.val_is_test}
        # The records come from our own generator/reader: a problem here is a bug, not bad input.
        validate_records(records, f"prepared manifest ({settings['source']})").raise_if_any()
        meta.update(num_records=len(records), splits=split_summary(records), skipped=skipped,
                    duplicates=duplicates, ignored_part_detections=ignored, settings=settings)
        save_manifest(records, tmp / "manifest.json")
        write_json(tmp / "meta.json", meta)
        stats = compute_stats(records, skipped, settings["source"], duplicates, ignored)
        stats.update(attribute_oracle(records, split="test", seed=settings["seed"]))
        title = (f"{settings['source']}: {len(records)} images, {stats['total']['ids']} ids "
                 "(boxes = part annotations)")
        outs.figure(figure_path, lambda path: data_samples_figure(
            sample_items(records, images_dir), path, title=title), "data sample figure")
        write_json(tmp_stats, stats)
    return stats


def summary(stats: dict, seconds: float) -> str:
    """One line for the log: source, counts, time, skipped records, the oracle's Rank-1 values."""
    t = stats["total"]
    line = (f"{stats['source']}: {t['ids']} ids, {t['images']} images, {t['captions']} captions "
            f"in {seconds:.1f}s (skipped {stats['skipped']['total']})")
    dup = stats.get("duplicates") or {}
    if dup.get("records_merged") or dup.get("captions_dropped"):
        line += (f"; merged {dup['records_merged']} duplicate record(s) into "
                 f"{dup['images_merged']} image(s), dropped {dup['captions_dropped']} repeated "
                 "caption(s)")
    if stats.get("ignored_part_detections"):
        line += f"; ignored part detections {stats['ignored_part_detections']}"
    if "oracle_all_R1" in stats:
        line += (f"; oracle test R1 global-only {stats['oracle_global_R1']:.1f}, "
                 f"all attributes {stats['oracle_all_R1']:.1f}")
    return line
