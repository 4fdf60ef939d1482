"""Encode images and captions in batches into L2-normalised features on the CPU.

Used by evaluation (:mod:`pfcvr.engine.evaluate`) and by ``pfcvr search``. Every encoder puts the
model in eval mode under ``torch.no_grad`` for the duration and restores its train/eval mode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from pfcvr.runtime.device import resolve_device


class EvaluationError(ValueError):
    """The model or the data cannot be evaluated as asked (no images, no queries, a negative
    part-fusion weight, fused features without part features)."""


@dataclass
class GalleryFeatures:
    """Encoded gallery. features: float [N, D] L2-normalised (CPU); ids: long [N];
    part_features: float [N, 6, D] L2-normalised or None; part_present: bool [N, 6] or None."""

    features: torch.Tensor
    ids: torch.Tensor
    part_features: torch.Tensor | None = None
    part_present: torch.Tensor | None = None


@dataclass
class QueryFeatures:
    """Encoded captions. features: float [Q, D] L2-normalised (CPU); part_queries: float
    [Q, 6, D] L2-normalised or None."""

    features: torch.Tensor
    part_queries: torch.Tensor | None = None


class _EvalMode:
    """``model.eval()`` + no_grad for the block; the previous train/eval mode is restored."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.grad = torch.no_grad()
        self.grad.__enter__()
        return self

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        self.model.train(self.was_training)


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def encode_image_batches(model, batches: Iterable[dict], device: str | torch.device, *,
                         parts: bool = False, total: int | None = None, progress: bool = False,
                         desc: str = "gallery") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode batches ``{images float [B,3,H,W], part_masks bool [B,6,G*G]?}``.

    Returns global features float [N, D] and (``parts``) part features float [N, 6, D], both
    L2-normalised, on the CPU. ``device``: auto | cpu | cuda or a torch.device.
    Raises EvaluationError when ``batches`` is empty; DeviceError for a device not present.
    """
    device = resolve_device(device, key="device")
    feats, part_feats = [], []
    with _EvalMode(model):
        for batch in _progress(batches, total or 0, desc, progress):
            images = batch["images"].to(device, non_blocking=True)
            feats.append(F.normalize(model.encode_image(images).float(), dim=-1).cpu())
            if parts:
                masks = batch["part_masks"].to(device, non_blocking=True)
                pf = model.image_part_features(images, masks).float()
                part_feats.append(F.normalize(pf, dim=-1).cpu())
    if not feats:
        raise EvaluationError(f"{desc}: no images to encode")
    return torch.cat(feats), (torch.cat(part_feats) if parts else None)


def encode_gallery(model, image_dataset, batch_size: int, device: str | torch.device,
                   progress: bool = False, *, parts: bool = False, num_workers: int = 0
                   ) -> GalleryFeatures:
    """Encode every image of a ``pfcvr.data.dataset.ImageDataset`` (no flip), in order."""
    from torch.utils.data import DataLoader

    from pfcvr.data.dataset import collate

    loader = DataLoader(image_dataset, batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate)
    feats, part_feats = encode_image_batches(model, loader, device, parts=parts,
                                             total=len(loader), progress=progress)
    present = image_dataset.present.clone() if parts else None
    return GalleryFeatures(feats, image_dataset.pids.clone(), part_feats, present)


def encode_queries(model, captions: Sequence[str], batch_size: int, device: str | torch.device,
                   *, parts: bool = False, progress: bool = False) -> QueryFeatures:
    """Tokenise (``model.tokenizer``) and encode captions in batches: QueryFeatures.

    ``parts=True`` also encodes the part queries (``model.text_part_queries``), which only a
    caption-context model can form; :func:`pfcvr.engine.evaluate.applicable_fusion` decides that.
    Raises EvaluationError when ``captions`` is empty.
    """
    if len(captions) == 0:
        raise EvaluationError("no queries to encode")
    device = resolve_device(device, key="device")
    tok = model.tokenizer
    feats, part_q = [], []
    starts = range(0, len(captions), batch_size)
    with _EvalMode(model):
        for lo in _progress(starts, len(starts), "queries", progress):
            ids = tok(list(captions[lo:lo + batch_size])).to(device)
            feats.append(F.normalize(model.encode_text(ids).float(), dim=-1).cpu())
            if parts:
                part_q.append(F.normalize(model.text_part_queries(ids).float(), dim=-1).cpu())
    return QueryFeatures(torch.cat(feats), torch.cat(part_q) if parts else None)


def fused_features(queries: QueryFeatures, gallery: GalleryFeatures, weight: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated features whose dot product is the fused score
    ``cos(t, v) + weight * mean_{k present} cos(q_k, p_k)`` (see :mod:`pfcvr.engine.evaluate`).

    Returns query float [Q, D + 6D] and gallery float [N, D + 6D].
    Raises EvaluationError when the part features were not encoded (``parts=False``).
    """
    if queries.part_queries is None or gallery.part_features is None:
        raise EvaluationError("part fusion needs part queries and part features (parts=True)")
    present = gallery.part_present.float()                               # [N, 6]
    share = present / present.sum(1, keepdim=True).clamp_min(1.0)       # mean over present parts
    g_parts = (gallery.part_features * share[:, :, None]).flatten(1)     # [N, 6D]
    q_parts = (weight * queries.part_queries).flatten(1)                 # [Q, 6D]
    return (torch.cat([queries.features, q_parts], 1),
            torch.cat([gallery.features, g_parts], 1))
