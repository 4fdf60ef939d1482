"""DVC stage `parts`: part regions and caption part phrases for every prepared image.

Reads data/prepared/{manifest,meta}.json; writes data/parts/parts.json (aligned 1:1 with the
manifest), reports/parts/stats.json (DVC metrics) and reports/figures/part_pairs.png; logs all to
the nested MLflow run `parts`. With parts.source=groundingdino the detector folder is checked
before anything else runs.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pfcvr import viz
from pfcvr.config import flatten, load_params
from pfcvr.data.grounding import (DetectorSettings, check_images_exist, detect_parts,
                                  prompt_phrases, resolve_detector, resolve_device)
from pfcvr.data.parts import build_parts, figure_items, images_root, record_name
from pfcvr.io import read_json, write_json, write_text
from pfcvr.tracking import stage_run

PREPARED = Path("data/prepared")
OUT = Path("data/parts/parts.json")
STATS = Path("reports/parts/stats.json")
FIGURE = Path("reports/figures/part_pairs.png")
CACHE = Path(".cache/parts")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", default=str(PREPARED))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--stats", default=str(STATS))
    ap.add_argument("--figure", default=str(FIGURE))
    ap.add_argument("--cache", default=str(CACHE), help="GroundingDINO result cache folder")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    cfg = params.parts
    settings = DetectorSettings.from_config(cfg)    # every parts.* key, whatever the source
    prompt_phrases(settings.prompt)                 # a bad prompt fails now, not mid-run
    source, on_error = cfg.source, params.data.on_error
    if source == "groundingdino":                   # missing weights fail before any work
        resolve_detector(settings.detector)
        resolve_device(settings.device)

    prepared = Path(args.prepared)
    records = read_json(prepared / "manifest.json")
    if not isinstance(records, list):
        raise ValueError(f"{prepared / 'manifest.json'}: must be a JSON list of records")
    meta_file = prepared / "meta.json"
    root = images_root(prepared, read_json(meta_file) if meta_file.is_file() else {})

    with stage_run("parts", params) as run:
        t0 = time.perf_counter()
        detect_info: dict = {}

        def detect(indices: list[int]):
            paths = [root / records[i]["file_path"] for i in indices]
            check_images_exist(paths, [record_name(i, records[i]) for i in indices])
            dets, info = detect_parts(settings, paths, Path(args.cache))
            detect_info.update(info)
            return dets

        doc, stats = build_parts(records, source, on_error, detect=detect)
        seconds = time.perf_counter() - t0
        if detect_info:
            stats["detector"] = {"path": settings.detector, "prompt": settings.prompt,
                                 "box_threshold": settings.box_threshold,
                                 "text_threshold": settings.text_threshold}
        # Compact JSON: grids make this file large; the dataset reads it once per run.
        write_text(args.out, json.dumps(doc, separators=(",", ":")) + "\n")
        write_json(args.stats, stats)
        viz.part_pairs_figure(figure_items(doc, root, n=4, records=records), args.figure,
                              title=f"Part pairs (parts.source = {source}): part crop above the "
                                    "caption phrase assigned to that part")
        metrics = {k: v for k, v in flatten(stats).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics["seconds"] = seconds
        metrics["images_per_second"] = len(records) / max(seconds, 1e-9)
        metrics.update({f"detector.{k}": v for k, v in detect_info.items()})
        run.log_metrics(metrics)
        run.log_artifact(args.stats)
        run.log_artifact(args.figure)
        run.set_tags({"parts.source": source})
    print(f"parts: {len(records)} images, source {source}, {seconds:.1f} s; "
          f"regions/image {stats['regions_per_image']}, phrases/caption "
          f"{stats['phrases_per_caption']}" +
          (f"; assignment P {stats['assignment']['precision']:.3f} "
           f"R {stats['assignment']['recall']:.3f}" if "assignment" in stats else ""))


if __name__ == "__main__":
    main()
