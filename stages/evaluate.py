"""DVC stage `evaluate@<variant>`: test-split retrieval of every trained seed, best and final.

    python -m stages.evaluate --variant full

Reads models/<variant>/seed<k>/{best,final}/ for every k of report.seeds, data/prepared and
data/parts/parts.json; writes reports/metrics/<variant>.json (DVC metrics), reports/eval/<variant>/
{cmc.tsv, model_card.md} and reports/figures/{cmc,topk}_<variant>.png as one set (published
together, the metrics last: pfcvr.runtime.output_set); logs them to the nested
MLflow run `evaluate@<variant>` (R1 ... mINP under the same names for every variant) with the
best checkpoint of seed report.seeds[0] as a registered pyfunc model `pfcvr-<variant>`. The work
is pfcvr.pipeline.evaluate.
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from pfcvr import paths
from pfcvr.config import load_params
from pfcvr.pipeline.evaluate import plan_evaluation, publish
from pfcvr.report.cards import mean_std
from pfcvr.runtime.stage import run_stage
from pfcvr.runtime.storage import check_writable
from pfcvr.tracking import stage_run
from pfcvr.tracking.model import log_model


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", required=True, help="an ablations.<variant> of params.yaml")
    ap.add_argument("--params", default=str(paths.PARAMS))
    ap.add_argument("--models", default=str(paths.MODELS))
    ap.add_argument("--prepared", default=str(paths.PREPARED))
    ap.add_argument("--parts", default=str(paths.PARTS))
    ap.add_argument("--metrics", default=str(paths.METRICS), help="folder of <variant>.json")
    ap.add_argument("--eval-reports", default=str(paths.EVAL_REPORTS))
    ap.add_argument("--figures", default=str(paths.FIGURES))
    args = ap.parse_args(argv)

    v = args.variant
    params = load_params(args.params, variant=v)
    plan = plan_evaluation(params, v, args.models, args.prepared, args.parts)  # fails before work
    out_json = Path(args.metrics) / f"{v}.json"
    out_dir = Path(args.eval_reports) / v
    out_cmc, out_card = out_dir / "cmc.tsv", out_dir / "model_card.md"
    fig_cmc, fig_topk = Path(args.figures) / f"cmc_{v}.png", Path(args.figures) / f"topk_{v}.png"
    check_writable([out_json.parent, out_dir, Path(args.figures)])   # before the evaluation

    with stage_run("evaluate", params, variant=v, tags={"split": "test"}) as run:
        result = plan.run(progress=sys.stderr.isatty(), log=functools.partial(print, flush=True))
        publish(result, out_json, out_cmc, out_card, fig_cmc, fig_topk)   # one set
        run.log_metrics(result.mlflow_metrics())
        for path in (out_json, out_cmc, out_card, fig_cmc, fig_topk):
            run.log_artifact(path)
        for m in result.models:
            run.log_artifact(m.folder / "config.json", f"models/{m.label}")
        run.set_tags({"mlflow.note.content": result.model_card()})
        pub = result.published_model()   # seeds[0], best on val: `models:/pfcvr-<variant>/latest`
        log_model(run, pub.folder, f"pfcvr-{v}", metadata={"variant": v, "seed": pub.seed,
                  "checkpoint": pub.checkpoint}, description=f"{v}, {pub.label}: {pub.folder}")
    b = result.summary()["best"]
    print(f"evaluate@{v}: best R1 {mean_std(b['R1'])}, mAP {mean_std(b['mAP'])} over seeds "
          f"{plan.seeds} -> {out_json}")


if __name__ == "__main__":
    sys.exit(run_stage("evaluate", main))
