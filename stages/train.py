"""DVC stage `train@<variant>`: train one ablation variant for every seed in `report.seeds`.

    python -m stages.train --variant full
    torchrun --nproc_per_node 4 -m stages.train --variant full        # DDP, one node

Reads data/prepared/ and data/parts/parts.json (train and val splits; never test). Writes
models/<variant>/seed<k>/{best,final}/ (model folders for `pfcvr.load`), result.json and
MODEL_CARD.md, reports/train/<variant>/{history.tsv,summary.json},
reports/figures/train_<variant>.png and the nested MLflow run `train@<variant>`.

Resume: a killed stage started again skips the finished seeds and resumes the one it was on
(see pfcvr.pipeline.train); a checkpoint written for other params, data (images included),
backbone, code or world size is not resumed. A user error ends as one line naming its cause.
"""
from __future__ import annotations

import argparse
import contextlib
import sys

from pfcvr import paths
from pfcvr.config import load_params, variant_description
from pfcvr.engine import distributed as D
from pfcvr.pipeline.train import join_world, train_variant
from pfcvr.runtime.stage import run_stage


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", required=True, help="a key of the ablations section")
    ap.add_argument("--params", default=str(paths.PARAMS))
    args = ap.parse_args(argv)
    variant = args.variant
    params = load_params(args.params, variant=variant)
    base = load_params(args.params)
    models, reports = paths.model_dir(variant), paths.train_reports(variant)
    figure, cache = paths.FIGURES / f"train_{variant}.png", paths.TRAIN_CACHE / variant
    # batch vs world size, output folders and device checked before any work
    info = join_world(params, outputs=(models, reports, figure.parent, cache))
    seeds = list(params.report.seeds)
    tracker = contextlib.nullcontext(None)
    if info.is_main:
        from pfcvr.tracking import stage_run

        tracker = stage_run("train", params, variant=variant, tags={
            "seeds": ",".join(map(str, seeds)), "world_size": info.world_size,
            "description": variant_description(params, variant)})
    with tracker as run:
        out = train_variant(params, variant, base=base, prepared=paths.PREPARED, parts=paths.PARTS,
                            models=models, reports=reports, figure=figure, cache=cache, run=run)
        s = out.summary
        if run is not None:
            run.log_metrics({k: v for k, v in s.items() if isinstance(v, (int, float))})
            run.log_artifact(figure)
            run.log_artifact(reports / "history.tsv")
            run.log_text(out.card, "model_card.md")
    if info.is_main:
        print(f"[train@{variant}] seeds {seeds}: mean best val R1 {s['best_val_R1_mean']:.2f} "
              f"(final {s['final_val_R1_mean']:.2f}); {s['train_seconds_total']:.1f} s of "
              "training", flush=True)
    return s


if __name__ == "__main__":   # a user error ends as one line (pfcvr.runtime.stage), on rank 0 only
    sys.exit(run_stage("train", main, cleanup=D.destroy))
