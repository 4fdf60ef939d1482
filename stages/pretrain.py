"""DVC stage `pretrain`: CLIP-style pretraining of the tiny backbone on the pretraining corpus.

    python -m stages.pretrain

Reads params (pretrain, model.tiny and sizes, seed) and data/prepared (the benchmark identities
the corpus must avoid, and the val split for zero-shot Rank-1; never test). Writes
models/pretrained/ (a transformers CLIP folder + its tokenizer, what `model.backbone: pretrained`
loads), reports/pretrain/{history.tsv,stats.json}, reports/figures/pretrain.png and the nested
MLflow run `pretrain`. A killed run started again resumes from its last checkpoint.
"""
from __future__ import annotations

import argparse
import sys

from pfcvr import paths
from pfcvr.config import flatten, load_params
from pfcvr.pipeline.pretrain import pretrain, write_outputs
from pfcvr.runtime.stage import run_stage
from pfcvr.tracking import stage_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(paths.PARAMS))
    args = ap.parse_args(argv)
    params = load_params(args.params)
    with stage_run("pretrain", params) as run:
        result = pretrain(params, prepared=paths.PREPARED, parts=paths.PARTS,
                          cache=paths.PRETRAIN_CACHE, run=run)
        write_outputs(result, paths.PRETRAINED, paths.PRETRAIN_REPORTS, paths.PRETRAIN_FIGURE,
                      cache=paths.PRETRAIN_CACHE)
        run.log_metrics({k: v for k, v in flatten(result.stats).items()
                         if isinstance(v, (int, float))})
        run.log_artifact(paths.PRETRAIN_FIGURE, "figures")
        run.log_artifact(paths.PRETRAIN_REPORTS / "stats.json", "pretrain")
    s = result.stats
    print(f"pretrain: {s['n_images']} corpus images of {s['n_ids']} vehicles, {s['steps']} steps "
          f"in {s['seconds']:.0f} s; zero-shot val R1 {s['final_val_R1']:.2f} "
          f"(type+colour oracle on val {s['oracle_val_global_R1']:.2f})")
    return 0


if __name__ == "__main__":   # a user error ends as one line (pfcvr.runtime.stage)
    sys.exit(run_stage("pretrain", main))
