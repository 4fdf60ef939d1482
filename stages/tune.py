"""DVC stage `tune`: an Optuna study over `tune.space` on the validation split.

Writes reports/tune/best_params.yaml, reports/tune/summary.json (DVC metrics),
reports/tune/best.md, reports/figures/tune_history.png and reports/figures/tune_importance.png,
and prints the `dvc exp run -S ...` line that applies the best params. Each trial is a nested MLflow
run under the `tune` run. Several workers may run this at once against one OPTUNA_STORAGE.
A study whose trials keep failing (or that completes none) stops with one line naming the last
trial's error and exits 1; the study stays in its storage (pfcvr.tuning.study). The work is
pfcvr.pipeline.tune.
"""
from __future__ import annotations

import argparse
import sys

from pfcvr import paths
from pfcvr.config import load_params
from pfcvr.pipeline.tune import tune
from pfcvr.runtime.stage import run_stage
from pfcvr.tracking import repo_root, stage_run
from pfcvr.tuning.storage import check_storage
from pfcvr.tuning.study import storage_url


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(paths.PARAMS))
    args = ap.parse_args(argv)
    params = load_params(args.params)
    root, out = repo_root(), paths.TUNE_REPORTS
    check_storage(storage_url(root))   # before the MLflow run: a bad storage is one line
    with stage_run("tune", params) as run:
        summary = tune(params, args.params, root, prepared=paths.PREPARED, parts=paths.PARTS,
                       out=out, history_figure=paths.TUNE_HISTORY_FIGURE,
                       importance_figure=paths.TUNE_IMPORTANCE_FIGURE, run=run)
        run.log_metrics({k: summary[k] for k in ("best_value", "n_complete", "n_pruned", "n_failed")
                         if k in summary})
        for path in (out / "summary.json", out / "best_params.yaml", out / "best.md",
                     paths.TUNE_HISTORY_FIGURE, paths.TUNE_IMPORTANCE_FIGURE):
            run.log_artifact(path)
    print(f"best val R1 {summary.get('best_value', float('nan')):.2f} "
          f"({summary['n_complete']} complete, {summary['n_pruned']} pruned, "
          f"{summary['n_failed']} failed)\napply it with:\n"
          f"  {summary.get('command', '(no trial completed)')}")
    return summary


if __name__ == "__main__":
    sys.exit(run_stage("tune", main))
