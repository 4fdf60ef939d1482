"""DVC stage `parts`: part regions and caption part phrases for every prepared image.

Reads data/prepared/{manifest,meta}.json; writes data/parts/parts.json (aligned 1:1 with the
manifest), reports/parts/stats.json (DVC metrics) and reports/figures/part_pairs.png as one set
(published together, stats last: pfcvr.runtime.output_set); logs all to the nested MLflow run `parts`.
With parts.source=groundingdino the detector folder is checked before anything else runs.
"""
from __future__ import annotations

import argparse
import json
import sys

from pfcvr import paths
from pfcvr.config import load_params
from pfcvr.pipeline.parts import PartsJob
from pfcvr.report.figures.data import part_pairs_figure
from pfcvr.runtime.output_set import OutputSet
from pfcvr.runtime.stage import run_stage
from pfcvr.tracking import stage_run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(paths.PARAMS))
    ap.add_argument("--prepared", default=str(paths.PREPARED))
    ap.add_argument("--out", default=str(paths.PARTS))
    ap.add_argument("--stats", default=str(paths.PARTS_STATS))
    ap.add_argument("--figure", default=str(paths.PARTS_FIGURE))
    ap.add_argument("--cache", default=str(paths.PARTS_CACHE), help="GroundingDINO result cache folder")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    job = PartsJob.from_params(params, args.prepared, args.cache)   # bad settings fail here
    with stage_run("parts", params) as run:
        result = job.run()
        with OutputSet(args.out) as outs:
            doc, _, stats = outs.file(args.out), outs.file(args.figure), outs.file(args.stats)
            doc.write_text(result.document_json())
            outs.figure(args.figure, lambda path: part_pairs_figure(
                result.figure_items(n=4), path, title=result.figure_title()), "part pairs figure")
            stats.write_text(json.dumps(result.stats, indent=2) + "\n")
        run.log_metrics(result.metrics())
        run.log_artifact(args.stats)
        run.log_artifact(args.figure)
        run.set_tags({"parts.source": result.source})
    print(f"parts: {result.summary()}")


if __name__ == "__main__":   # a user error (bad part data, detector, params) ends as one line
    sys.exit(run_stage("parts", main))
