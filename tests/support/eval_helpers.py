"""Tiny real pieces for the evaluation and search tests: a synthetic split, a small randomly
initialised PFCVR saved as complete model folders (no training: the tests check plumbing and
arithmetic, not accuracy)."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from pfcvr.config import load_params, set_dotted

REPO = Path(__file__).resolve().parents[2]

TINY_MODEL = {
    "model.backbone": "tiny", "model.image_size": 48, "model.patch_size": 12, "model.embed_dim": 32,
    "model.tiny.vision_width": 32, "model.tiny.vision_layers": 1, "model.tiny.vision_heads": 2,
    "model.tiny.text_width": 32, "model.tiny.text_layers": 1, "model.tiny.text_heads": 2,
    "model.tiny.vocab_size": 600, "model.tiny.context_length": 32,
    "model.part_decoder.layers": 1, "model.part_decoder.heads": 2, "model.part_decoder.ffn_dim": 32,
    "model.mlm_decoder.layers": 1, "model.mlm_decoder.heads": 2,
    "model.mim_decoder.layers": 1, "model.mim_decoder.heads": 2, "model.mim_decoder.head_dim": 8,
    "model.mim_decoder.ffn_dim": 32,
}
TINY_DATA = {"data.synthetic.n_ids": 16, "data.synthetic.images_per_id": 2,
             "data.synthetic.image_size": 48, "data.synthetic.family_size": 2,
             "data.synthetic.split": {"train": 0.6, "val": 0.15, "test": 0.25}}


def write_params(path: Path, overrides: dict) -> Path:
    """The repository's params.yaml with dotted ``overrides`` applied, written to ``path``."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in {**TINY_DATA, **TINY_MODEL, **overrides}.items():
        set_dotted(raw, key, value)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_params(path)  # validate now: a bad override fails here, not inside the test
    return path


def make_split_data(root: Path, params) -> tuple[Path, Path]:
    """Synthetic manifest + images + annotation parts under ``root``: (prepared dir, parts.json)."""
    from pfcvr.data import synthetic
    from pfcvr.data.parts import build_parts
    from pfcvr.runtime.atomic import write_json

    prepared = root / "prepared"
    records = synthetic.generate(params.data.synthetic, 0, prepared / "images", workers=1)
    write_json(prepared / "manifest.json", records)
    write_json(prepared / "meta.json", {"source": "synthetic", "images_root": "images",
                                        "num_records": len(records)})
    doc, _ = build_parts(records, "annotations")
    write_json(root / "parts.json", doc)
    return prepared, root / "parts.json"


def build_tiny_model(params, train_captions: list[str], seed: int = 0, num_classes: int = 8):
    from pfcvr.model import build_model, build_tokenizer

    tok = build_tokenizer(params.model, train_captions)
    torch.manual_seed(seed)
    return build_model(params.model, num_classes, tok)
