"""The PFCVR model and its tokenizer (pfcvr.model.tokenizer): build it from the ``model`` params,
encode, train, save and load.

    tok = build_tokenizer(params.model, train_captions)
    model = build_model(params.model, num_classes, tok)
    criterion = Criterion(params.train.weights)          # pfcvr.losses
    out = model(batch, terms=criterion.terms, mask_ratio=..., text_mask_ratio=...,
                mim_mask=...)          # PFCVROutput(sdm, id, mlm, mim, part, mlm_acc), unweighted
    loss = criterion(out)
    text = model.encode_text(tok(captions)); image = model.encode_image(images)
    save_model(model, folder, extra); model = load_model(folder, device)
"""
from __future__ import annotations

from pfcvr.model.io import load_model, save_model
from pfcvr.model.pfcvr import PFCVR, PFCVROutput

__all__ = ["PFCVR", "PFCVROutput", "build_model", "build_tokenizer", "load_model", "save_model"]


def build_tokenizer(model_cfg, train_captions):
    """The tokenizer for ``model_cfg`` (the ``model`` params section).

    ``model.backbone: tiny``: a CLIP-style BPE learned offline and deterministically on
    ``train_captions`` (``model.tiny.vocab_size`` entries at most, ``model.tiny.context_length``
    tokens). ``pretrained`` (and any folder written by the pretrain stage): the tokenizer saved
    with it, learned on the pretraining corpus. Otherwise the checkpoint's own CLIP tokenizer
    plus ``<|mask|>``, with the text encoder's context length (``train_captions`` unused).
    """
    from pathlib import Path

    from pfcvr.model.backbone import backbone_source, checkpoint_location
    from pfcvr.model.tokenizer import META_FILE, Tokenizer

    name = backbone_source(model_cfg.backbone)
    if name == "tiny":
        return Tokenizer.train(train_captions, model_cfg.tiny.vocab_size,
                               model_cfg.tiny.context_length)
    if (Path(name) / META_FILE).is_file():    # a pfcvr-pretrained CLIP keeps its own BPE
        return Tokenizer.load(name)
    from transformers import CLIPConfig

    local = checkpoint_location(name)
    try:
        cfg = CLIPConfig.from_pretrained(name, local_files_only=local)
    except OSError as err:
        raise OSError(f"model.backbone={name!r}: cannot read its CLIP config: {err}") from None
    return Tokenizer.from_clip(name, cfg.text_config.max_position_embeddings)


def build_model(model_cfg, num_classes: int, tokenizer) -> PFCVR:
    """A new PFCVR for ``model_cfg`` with an ID classifier over ``num_classes`` training ids
    (0 = none) and ``tokenizer`` (from :func:`build_tokenizer`). Random parts are drawn from
    torch's global RNG: seed it first."""
    from pfcvr.model.backbone import CLIPBackbone, build_clip

    clip = build_clip(model_cfg, tokenizer)
    return PFCVR(model_cfg, CLIPBackbone(clip, cls_pos_quirk=model_cfg.cls_pos_quirk), tokenizer,
                 num_classes)
