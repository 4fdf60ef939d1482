"""The five PFCVR losses (method §4), one function each, and the one place weights are applied.

All losses compute in fp32 (inputs are cast), so they are safe under bf16/fp16 autocast.
``scale`` is the fixed logit scale 1 / model.temperature (official 1 / 0.07 = 14.29), shared by
SDM and the part loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

TERMS = ("sdm", "id", "mlm", "mim", "part")


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

    logits: [M, V] at the M selected positions of the batch; targets: [M] original ids.
    """
    return F.cross_entropy(logits.float(), targets)


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


def weighted_total(terms: dict[str, torch.Tensor], weights) -> torch.Tensor:
    """The total loss: sum of ``weights.<name> * terms[name]`` over the five loss names present.

    ``weights`` is ``train.weights`` (a LossWeights section). Other entries of ``terms`` (e.g.
    the ``mlm_acc`` diagnostic) are not losses and are ignored.
    """
    total = None
    for name in TERMS:
        if name in terms:
            w = getattr(weights, name)
            part = w * terms[name]
            total = part if total is None else total + part
    if total is None:
        raise ValueError("train.weights: every loss weight is zero; nothing to train")
    return total
