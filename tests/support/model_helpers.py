"""Small model configurations, batches and checkpoints for the model / loss / I/O tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from pfcvr.config import LossWeights, ModelConfig, deep_merge, parse_section, read_raw, set_dotted
from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.model.tokenizer import Tokenizer, byte_symbols

ROOT = Path(__file__).resolve().parents[2]

CAPTIONS = [
    "a red sedan with black wheels and tinted windows",
    "a blue suv with a roof rack and chrome mirrors",
    "white van, two sliding doors and round lights",
    "the silver hatchback has alloy wheels and a sunroof",
    "a green pickup truck with a black roof and big mirrors",
    "yellow taxi with a sign on the roof and dark windows",
]

SMALL = {
    "backbone": "tiny", "image_size": 32, "patch_size": 8, "embed_dim": 32,
    "tiny": {"vision_width": 32, "vision_layers": 2, "vision_heads": 2, "text_width": 32,
             "text_layers": 2, "text_heads": 2, "context_length": 16, "vocab_size": 600,
             "stem": "conv"},
    "part_decoder": {"layers": 1, "heads": 2, "ffn_dim": 64, "dropout": 0.0},
    "mlm_decoder": {"layers": 1, "heads": 2},
    "mim_decoder": {"layers": 1, "heads": 2, "head_dim": 16, "ffn_dim": 64},
}

FULL = LossWeights(sdm=1.0, id=0.5, mlm=0.5, mim=0.5, part=0.2)
KW = dict(mask_ratio=0.75, text_mask_ratio=0.15, mim_mask="part")


def weights(**kw) -> LossWeights:
    """Loss weights, zero unless given."""
    base = {"sdm": 0.0, "id": 0.0, "mlm": 0.0, "mim": 0.0, "part": 0.0}
    base.update(kw)
    return LossWeights(**base)


def train_forward(model, batch: dict, w: LossWeights, **kw) -> dict:
    """One training forward as the trainer runs it: ``Criterion(w)`` picks the branches, the
    model returns their unweighted terms, the criterion sums them. Returns {term: tensor} for the
    computed terms, ``mlm_acc`` when MLM ran, and the total ``loss``. ``kw`` overrides KW."""
    from pfcvr.losses import Criterion

    criterion = Criterion(w)
    out = model(batch, terms=criterion.terms, **{**KW, **kw})
    extra = {} if out.mlm_acc is None else {"mlm_acc": out.mlm_acc}
    return {**out.terms(), **extra, "loss": criterion(out)}


def model_cfg(**overrides):
    """The ``model`` params section of the small test model: SMALL and ``overrides`` (dotted keys
    under ``model``) over the repository's params.yaml, validated like it."""
    raw = read_raw(ROOT / "params.yaml")
    raw["model"] = deep_merge(raw["model"], json.loads(json.dumps(SMALL)))
    for key, value in overrides.items():
        set_dotted(raw["model"], key, value)
    return parse_section(ModelConfig, raw["model"], "model")


def small_tokenizer(context_length: int = 16) -> Tokenizer:
    return Tokenizer.train(CAPTIONS * 3, 600, context_length)


def small_model(num_classes: int = 4, seed: int = 0, **overrides):
    from pfcvr.model import build_model

    torch.manual_seed(seed)
    cfg = model_cfg(**overrides)
    return build_model(cfg, num_classes, small_tokenizer(cfg.tiny.context_length))


def random_batch(model, batch_size: int = 4, num_classes: int = 4, seed: int = 0) -> dict:
    """A training batch in the dataset contract, from random tensors."""
    g = torch.Generator().manual_seed(seed)
    n = model.grid_size ** 2
    k = len(PART_CATEGORIES)
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(batch_size)]
    present = torch.rand(batch_size, k, generator=g) < 0.7
    present[:, 0] = True
    masks = (torch.rand(batch_size, k, n, generator=g) < 0.3) & present.unsqueeze(-1)
    return {"images": torch.randn(batch_size, 3, model.image_size, model.image_size, generator=g),
            "caption_ids": model.tokenizer(captions),
            "pids": torch.arange(batch_size) // 2 % num_classes,
            "part_masks": masks, "part_present": present,
            "image_index": torch.arange(batch_size)}


def save_tiny_clip(folder, image_size: int = 32, patch_size: int = 8, context_length: int = 16,
                   with_model: bool = True):
    """A tiny random transformers CLIPModel + CLIPTokenizer saved with save_pretrained: a stand-in
    for a real checkpoint folder (``with_model=False``: the tokenizer only). Returns the
    tokenizer's vocabulary size."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    symbols = byte_symbols()
    words = ["red", "car", "blue", "wheels", "roof", "mirrors", "windows", "doors", "lights"]
    merges = []
    vocab_list = symbols + [s + "</w>" for s in symbols]
    for w in words:                              # merge each word left to right into one token
        cur = w[0]
        for i, ch in enumerate(w[1:], start=1):
            nxt = ch + ("</w>" if i == len(w) - 1 else "")
            merges.append((cur, nxt))
            cur = cur + nxt
            if cur not in vocab_list:
                vocab_list.append(cur)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_list))}
    tok = CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)))
    tok.model_max_length = context_length
    tok.save_pretrained(folder)
    if not with_model:
        return len(vocab)
    torch.manual_seed(123)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=context_length, pad_token_id=0,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=image_size, patch_size=patch_size),
        projection_dim=24)
    CLIPModel(cfg).save_pretrained(folder)
    return len(vocab)
