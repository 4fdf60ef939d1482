"""The work of the DVC stage ``zero_shot``: the pretrained backbone on the test split with no
fine-tuning (the first row of the paper's tables; ``stages/zero_shot.py`` only does the I/O
around :func:`zero_shot_document`).

The model is the backbone that ``model.backbone`` names (``pretrained``: the pretrain stage's
folder) as a :class:`pfcvr.model.global_encoder.GlobalEncoder`: the global features PFCVR
retrieves with after fine-tuning (CLS image token, EOT text token), without any PFCVR head.
"""
from __future__ import annotations

from pathlib import Path

from pfcvr.metrics import summarize_runs
from pfcvr.paths import ZERO_SHOT   # the name of its metrics file and report row

__all__ = ["ZERO_SHOT", "zero_shot_document"]


def zero_shot_document(params, prepared: str | Path, parts: str | Path,
                       progress: bool = False) -> dict:
    """``reports/metrics/zero_shot.json``: ``{"best": {metric: {"mean", "std", "runs"}},
    "seeds": [params.seed], "single_seed": true, "split": "test", "n_queries", "n_gallery",
    "backbone"}``, shaped like a variant's metrics document (one run, no std).

    Raises OSError when ``model.backbone`` cannot be loaded (e.g. ``pretrained`` before the
    pretrain stage ran), EvaluationError for an empty test split.
    """
    import torch

    from pfcvr.data.dataset import load_split
    from pfcvr.engine.evaluate import evaluate_retrieval
    from pfcvr.model import build_tokenizer
    from pfcvr.model.backbone import CLIPBackbone, build_clip
    from pfcvr.model.global_encoder import GlobalEncoder

    test = load_split(prepared, parts, "test")
    torch.manual_seed(params.seed)        # `tiny` is random: its row then measures chance
    # `tiny` learns its BPE on the training captions, as training does; the checkpoints bring theirs
    captions = load_split(prepared, parts, "train").captions()[0] \
        if params.model.backbone == "tiny" else []
    tokenizer = build_tokenizer(params.model, captions)
    backbone = CLIPBackbone(build_clip(params.model, tokenizer),
                            cls_pos_quirk=params.model.cls_pos_quirk)
    model = GlobalEncoder(backbone, tokenizer)
    result = evaluate_retrieval(model, test, batch_size=params.eval.batch_size,
                                chunk_size=params.eval.chunk_size, device=params.train.device,
                                progress=progress)
    return {"best": summarize_runs([result.scalars()]), "seeds": [params.seed],
            "single_seed": True, "split": "test", "n_queries": int(result.n_queries),
            "n_gallery": int(result.n_gallery), "backbone": params.model.backbone}
