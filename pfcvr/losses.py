"""The five PFCVR losses (docs/method.md §4), one function each, and :class:`Criterion`, the one
place where their weights are applied; and :func:`info_nce`, the pretraining loss of the
``pretrain`` stage (CLIP's, not one of PFCVR's five).

All losses compute in fp32 (inputs are cast), so they are safe under bf16/fp16 autocast.
``scale`` is the fixed logit scale 1 / model.temperature (official 1 / 0.07 = 14.29), shared by
SDM and the part loss.

The split of work follows open_clip (a loss class holds the loss settings; the model only
computes): ``PFCVR.forward`` returns the *unweighted* terms of the branches it is asked to run,
and ``Criterion(train.weights)`` says which branches to run and sums the weighted terms.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

# The loss names, defined here only: the fields of ``train.weights``, the terms of
# ``PFCVROutput``, the loss columns of the training history (in this order).
TERMS = ("sdm", "id", "mlm", "mim", "part")

# An MLM target at a position that is not scored (PyTorch's cross-entropy default ignore_index).
IGNORE_INDEX = -100


def sdm_loss(image: torch.Tensor, text: torch.Tensor, pids: torch.Tensor, scale: float,
             eps: float = 1e-8) -> torch.Tensor:
    """Similarity Distribution Matching (§4.1): KL(p || q) image->text plus text->image.

    image, text: global features [B, D] (normalised here); pids [B]. q is the row-normalised
    identity-match matrix; p the softmax of scale * cosine similarities.
    """
    i = F.normalize(image.float(), dim=-1)
    t = F.normalize(text.float(), dim=-1)
    same = (pids.view(-1, 1) == pids.view(1, -1)).float()
    log_q = torch.log(same / same.sum(dim=1, keepdim=True) + eps)
    sim = scale * i @ t.t()

    def kl(logits: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()

    return kl(sim) + kl(sim.t())                        # a sum of both directions, not a mean


def id_loss(image_logits: torch.Tensor, text_logits: torch.Tensor,
            pids: torch.Tensor) -> torch.Tensor:
    """Identity classification (§4.2): mean of the image and text cross-entropies.

    *_logits: [B, C] from the shared classifier on the raw global features; pids [B] in 0..C-1.
    """
    return 0.5 * (F.cross_entropy(image_logits.float(), pids)
                  + F.cross_entropy(text_logits.float(), pids))


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Masked-language recovery (§4.3): cross-entropy over the corrupted positions only.

    logits: [M, V] at M positions of the batch; targets: [M] original ids, or
    :data:`IGNORE_INDEX` at a position that was not corrupted (the static-shape path scores every
    position). The mean runs over the positions whose target is not ignored.
    """
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)


def mim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Masked-image recovery (§4.5): pixel MSE averaged over the removed patches.

    pred, target: [B, R, P*P*3] at the R removed patches of each image (normalised pixels).
    """
    return F.mse_loss(pred.float(), target.float())


def part_loss(visual: torch.Tensor, queries: torch.Tensor, present: torch.Tensor,
              scale: float) -> torch.Tensor:
    """Part-level alignment (§4.4), batched: sigmoid BCE on the scaled cosine matrix of the parts
    present in each image, identity targets, intra-image negatives only.

    visual: visual part features [B, K, D]; queries: decoded part queries [B, K, D];
    present: bool [B, K]. Per image the loss is the mean over its P x P present entries (the
    official code also adds the transposed matrix, whose mean BCE is the same number, and halves);
    the batch loss is the mean over images with at least one part.
    """
    v = F.normalize(visual.float(), dim=-1)
    q = F.normalize(queries.float(), dim=-1)
    logits = scale * v @ q.transpose(1, 2)                                   # [B, K, K]
    eye = torch.eye(logits.shape[1], device=logits.device).expand_as(logits)
    valid = (present.unsqueeze(2) & present.unsqueeze(1)).float()
    bce = F.binary_cross_entropy_with_logits(logits, eye, reduction="none")
    per_image = (bce * valid).sum(dim=(1, 2)) / valid.sum(dim=(1, 2)).clamp_min(1.0)
    has_parts = present.any(dim=1).float()
    return (per_image * has_parts).sum() / has_parts.sum().clamp_min(1.0)


def info_nce(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric CLIP loss of matched rows: image, text [B, D] (unnormalised) -> scalar.

    Row i of ``image`` and of ``text`` are a pair; every other row is a negative of both. The
    logits are ``scale`` times the cosines (``scale`` = 1 / model.temperature); the loss is the
    mean of the image->text and text->image cross-entropies (CLIP, Radford et al. 2021). Used by
    :mod:`pfcvr.pipeline.pretrain` only, not part of :class:`Criterion`.
    """
    logits = scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    target = torch.arange(logits.shape[0])
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class Criterion:
    """The training objective: ``sum(weights[name] * output.<name>)`` over the active terms.

    ``weights``: the ``train.weights`` section (or any mapping / object with the five names of
    :data:`TERMS`), the coefficients of the §4 total; their values live in params.yaml only.
    Built once per run, as open_clip builds its loss. A term is *active* when its weight is > 0;
    the model computes the active terms only (pass ``terms=criterion.terms`` to
    ``PFCVR.forward``), so a zero-weight branch costs nothing and its parameters get no gradient.

    Attributes: ``weights`` ({name: float} in TERMS order), ``terms`` (frozenset of the active
    names), ``names`` (all loss names, :data:`TERMS`; the loss columns of a training history),
    ``all_active`` (every branch runs, so every parameter gets a gradient: DDP can skip its
    unused-parameter search).

    Raises ValueError (naming ``train.weights``) when a weight is missing, negative or not
    finite, or when every weight is zero (nothing to train).
    """

    names = TERMS

    def __init__(self, weights):
        get = weights.get if isinstance(weights, Mapping) else (lambda k: getattr(weights, k, None))
        self.weights: dict[str, float] = {}
        for name in TERMS:
            w = get(name)
            if w is None or isinstance(w, bool) or not isinstance(w, (int, float)) \
                    or not math.isfinite(w) or w < 0:
                raise ValueError(f"train.weights.{name}={w!r}: must be a finite number >= 0")
            self.weights[name] = w
        self.terms = frozenset(name for name in TERMS if self.weights[name] > 0)
        if not self.terms:
            raise ValueError("train.weights: every loss weight is zero; nothing to train")

    @property
    def all_active(self) -> bool:
        return len(self.terms) == len(TERMS)

    def __call__(self, output) -> torch.Tensor:
        """The total loss, a scalar tensor [] (fp32 when the terms are).

        ``output``: the model's output, read by attribute (``output.sdm`` ...); a term is present
        when not None. Each weight is applied exactly once, in :data:`TERMS` order; a present
        term whose weight is zero is not added (it is a diagnostic then). Raises ValueError when
        an active term is missing (the model was not asked for it).
        """
        total = None
        for name in TERMS:
            if name not in self.terms:
                continue
            value = getattr(output, name, None)
            if value is None:
                raise ValueError(f"loss term {name!r} has weight train.weights.{name}="
                                 f"{self.weights[name]:g} but the model did not compute it; "
                                 "call the model with terms=criterion.terms")
            part = self.weights[name] * value
            total = part if total is None else total + part
        return total

    def __repr__(self) -> str:
        return "Criterion(" + ", ".join(f"{k}={v:g}" for k, v in self.weights.items()) + ")"
