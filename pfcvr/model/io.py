"""Save and restore a complete PFCVR model folder, offline.

A model folder holds:
* ``model.safetensors`` — every parameter and persistent buffer;
* ``config.json`` — ``{"format", "model": model params (dict), "num_classes",
  "clip_config": the backbone's CLIPConfig (after position-grid and vocabulary resizing),
  "extra": caller metadata such as variant / seed / epoch / val metrics}``;
* ``tokenizer/`` — the tokenizer (:meth:`Tokenizer.save`).

Nothing is downloaded or retrained on load: the CLIP architecture is rebuilt from the stored
config and the weights are loaded strictly.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pfcvr.runtime.atomic import atomic_dir

FORMAT = "pfcvr-model/1"
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer"


def save_model(model, folder: str | Path, extra: dict | None = None) -> Path:
    """Write ``model`` (a PFCVR) to ``folder`` atomically (the folder is replaced as a whole)."""
    folder = Path(folder)
    meta = {"format": FORMAT, "model": model.config, "num_classes": model.num_classes,
            "clip_config": model.backbone.clip_config, "extra": dict(extra or {})}
    try:
        text = json.dumps(meta, indent=2)
    except TypeError as err:
        raise TypeError(f"save_model({folder}): extra must be JSON-serialisable ({err})") from None
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(text + "\n")
        model.tokenizer.save(tmp / TOKENIZER)
    return folder


def resolve_model_folder(folder: str | Path) -> Path:
    """A model folder (has config.json); else its ``best/``; else the lowest ``seed<k>/`` (then
    its ``best/``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such model folder")
    if (folder / CONFIG).is_file():
        return folder
    if (folder / "best").is_dir():
        return resolve_model_folder(folder / "best")
    seeds = sorted((p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"seed\d+", p.name)),
                   key=lambda p: int(p.name[4:]))
    if seeds:
        return resolve_model_folder(seeds[0])
    raise FileNotFoundError(f"{folder}: not a model folder (expected {CONFIG}, a best/ folder, or "
                            f"seed<k>/ folders)")


def load_model(folder: str | Path, device: str | torch.device = "cpu"):
    """Restore a PFCVR saved by :func:`save_model` on ``device``, in eval mode, offline.

    The returned model carries ``model.extra`` (the metadata saved with it) and
    ``model.source_folder``.
    """
    from pfcvr.config import ConfigError, ModelConfig, parse_section
    from pfcvr.model.backbone import CLIPBackbone, clip_from_config
    from pfcvr.model.pfcvr import PFCVR
    from pfcvr.model.tokenizer import Tokenizer

    folder = resolve_model_folder(folder)
    try:
        meta = json.loads((folder / CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / CONFIG}: not valid JSON ({err})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG}: format {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        cfg = parse_section(ModelConfig, meta["model"], "model")
    except ConfigError as err:
        raise ValueError(f"{folder / CONFIG}: invalid model params ({err})") from None
    tok = Tokenizer.load(folder / TOKENIZER)
    backbone = CLIPBackbone(clip_from_config(meta["clip_config"]), cls_pos_quirk=cfg.cls_pos_quirk)
    model = PFCVR(cfg, backbone, tok, meta["num_classes"])
    if not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"{folder}: {WEIGHTS} is missing")
    state = load_file(str(folder / WEIGHTS))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:                      # shape mismatches
        raise ValueError(f"{folder / WEIGHTS}: does not match the model in {CONFIG}: "
                         f"{err}") from None
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS}: does not match the model in {CONFIG} "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.extra = meta.get("extra", {})
    model.source_folder = str(folder)
    return model.to(device).eval()
