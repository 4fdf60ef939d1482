"""DVC stage `zero_shot`: the pretrained backbone on the test split, no fine-tuning.

    python -m stages.zero_shot

Reads models/pretrained/ (through `model.backbone`), data/prepared and data/parts/parts.json;
writes reports/metrics/zero_shot.json, the report's zero-shot row, and logs R1 ... mINP to the
nested MLflow run `zero_shot`. The work is pfcvr.pipeline.zero_shot.
"""
from __future__ import annotations

import argparse
import sys

from pfcvr import paths
from pfcvr.config import load_params
from pfcvr.pipeline.zero_shot import ZERO_SHOT, zero_shot_document
from pfcvr.runtime.atomic import write_json
from pfcvr.runtime.stage import run_stage
from pfcvr.tracking import stage_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(paths.PARAMS))
    args = ap.parse_args(argv)
    params = load_params(args.params)
    out = paths.METRICS / f"{ZERO_SHOT}.json"
    with stage_run(ZERO_SHOT, params, tags={"split": "test"}) as run:
        doc = zero_shot_document(params, paths.PREPARED, paths.PARTS, progress=sys.stderr.isatty())
        write_json(out, doc)
        run.log_metrics({m: s["mean"] for m, s in doc["best"].items()})
        run.log_artifact(out)
    b = doc["best"]
    print(f"zero_shot: backbone {params.model.backbone!r} on test, no fine-tuning: R1 "
          f"{b['R1']['mean']:.2f}, mAP {b['mAP']['mean']:.2f} ({doc['n_queries']} queries) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_stage(ZERO_SHOT, main))
