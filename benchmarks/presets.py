"""Model configurations kept as data (``model:`` sections of params.yaml).

``PAPER`` is the official PFCVR architecture (docs/method.md §3) with random weights: CLIP ViT-B/16
dimensions (vision 768 x 12 layers x 12 heads, text 512 x 12 x 8, 77 tokens, 49,408-token BPE,
joint width 512) at 384 x 384 (24 x 24 patches), part decoder 6 layers x 512 / FFN 2048 /
8 heads / dropout 0.1, MLM 4 layers x 8 heads, MIM 4 blocks of 8 heads x 96 with GEGLU 2048.
It is built through the ``tiny`` (random CLIPConfig) path, so it needs no download; the
benchmarks (train_step.py, train_gpu.py) use it to compare with the official step cost. They run
as scripts, so their folder is on ``sys.path`` and they import this as ``presets``.
"""
from __future__ import annotations

PAPER = {
    "backbone": "tiny",
    "image_size": 384,
    "patch_size": 16,
    "embed_dim": 512,
    "tiny": {"vision_width": 768, "vision_layers": 12, "vision_heads": 12,
             "text_width": 512, "text_layers": 12, "text_heads": 8,
             "context_length": 77, "vocab_size": 49408, "stem": "patch"},
    "temperature": 0.07,
    "part_context": "caption",
    "cls_pos_quirk": False,
    "part_decoder": {"layers": 6, "heads": 8, "ffn_dim": 2048, "dropout": 0.1},
    "mlm_decoder": {"layers": 4, "heads": 8},
    "mim_decoder": {"layers": 4, "heads": 8, "head_dim": 96, "ffn_dim": 2048},
}

PRESETS = {"paper": PAPER}


def preset(name: str):
    """The ``ModelConfig`` of a named preset (validated like params.yaml)."""
    from pfcvr.config import ModelConfig, parse_section

    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return parse_section(ModelConfig, PRESETS[name], "model")
