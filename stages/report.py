"""DVC stage `report`: ablation table, paired intervals, verdicts, figure; published to MLflow.

Reads reports/metrics/<variant>.json for every variant of `report.variants`, reports/metrics/
zero_shot.json, reports/data/stats.json and reports/pretrain/stats.json; writes reports/ablation.md,
reports/compare.json (the cells `make compare` shows), reports/figures/ablation.png and
reports/ablation.json (DVC metrics) as one set (pfcvr.runtime.output_set). What the report states
comes from those inputs; where they disagree with the params, a warning says so (on stderr and at
the top of the report). Publishes to MLflow whenever it runs; like every stage it runs only when its
inputs changed, so a second clone that `dvc pull`s the outputs runs nothing. The work is
pfcvr.pipeline.report.ablation_report.
"""
from __future__ import annotations

import argparse
import sys

from pfcvr import paths
from pfcvr.config import load_params
from pfcvr.pipeline.report import ablation_report, publish
from pfcvr.runtime.stage import run_stage
from pfcvr.tracking import stage_run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(paths.PARAMS))
    ap.add_argument("--metrics", default=str(paths.METRICS), help="folder of <variant>.json")
    ap.add_argument("--data-stats", default=str(paths.DATA_STATS))
    ap.add_argument("--out-md", default=str(paths.ABLATION_MD))
    ap.add_argument("--out-json", default=str(paths.ABLATION_JSON))
    ap.add_argument("--compare", default=str(paths.COMPARE_JSON))
    ap.add_argument("--figure", default=str(paths.ABLATION_FIGURE))
    args = ap.parse_args(argv)

    params = load_params(args.params)
    outputs = (args.out_md, args.out_json, args.compare, args.figure)
    with stage_run("report", params) as run:
        report = ablation_report(params, args.metrics, args.data_stats,
                                 paths.PRETRAIN_REPORTS / "stats.json")
        publish(report, args.out_md, args.out_json, args.compare, args.figure)   # one set
        metrics = report.mlflow_metrics()
        run.log_metrics(metrics)
        for path in outputs:
            run.log_artifact(path)
        run.log_to_parent(metrics=metrics, artifacts=list(outputs),
                          tags={"mlflow.note.content": report.markdown})
    print(report.results_section())


if __name__ == "__main__":
    sys.exit(run_stage("report", main))
