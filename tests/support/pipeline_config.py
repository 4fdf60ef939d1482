"""The small but complete configuration of the end-to-end tests (test_pipeline, test_lab): every
stage and branch runs, in about a minute per `dvc repro` on 2 cores. Dotted params.yaml keys."""
from __future__ import annotations

PIPELINE_TINY = {
    "data.synthetic.n_ids": 30, "data.synthetic.images_per_id": 4,
    "data.synthetic.family_size": 3,
    # 10 families: 5 train, 2 val, 3 test (the default 0.8/0.06/0.14 leaves one test family)
    "data.synthetic.split": {"train": 0.5, "val": 0.15, "test": 0.35},
    "model.tiny.vision_width": 64, "model.tiny.vision_layers": 2, "model.tiny.vision_heads": 2,
    "model.tiny.text_width": 64, "model.tiny.text_layers": 2, "model.tiny.text_heads": 2,
    "model.tiny.vocab_size": 600, "model.embed_dim": 64,
    "model.part_decoder": {"layers": 1, "heads": 2, "ffn_dim": 64, "dropout": 0.1},
    "model.mlm_decoder": {"layers": 1, "heads": 2},
    "model.mim_decoder": {"layers": 1, "heads": 2, "head_dim": 16, "ffn_dim": 64},
    "pretrain.n_ids": 120, "pretrain.steps": 20, "pretrain.warmup_steps": 2,
    "pretrain.batch_size": 32, "pretrain.eval_every": 10,
    "train.batch_size": 16, "tune.epochs": 1,
}
