"""The five losses against direct transcriptions of docs/method.md §4, and the weighting."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pfcvr import losses
from pfcvr.config import LossWeights

SCALE = 1 / 0.07


def _sdm_reference(img, txt, pids, scale):
    """§4.1 written element by element."""
    b = len(pids)
    total = 0.0
    for a, c in ((img, txt), (txt, img)):
        for i in range(b):
            sims = [scale * F.cosine_similarity(a[i], c[j], dim=0).item() for j in range(b)]
            z = math.log(sum(math.exp(s) for s in sims))
            n_pos = sum(int(pids[i] == pids[k]) for k in range(b))
            for j in range(b):
                p = math.exp(sims[j] - z)
                q = int(pids[i] == pids[j]) / n_pos
                total += p * (math.log(p) - math.log(q + 1e-8)) / b
    return total


def test_sdm_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    pids = torch.tensor([0, 1, 0, 2, 1])
    got = losses.sdm_loss(img, txt, pids, SCALE)
    assert got.item() == pytest.approx(_sdm_reference(img, txt, pids, SCALE), rel=1e-4)


def test_sdm_is_small_for_matching_pairs_and_large_for_swapped():
    feats = torch.eye(4) * 3
    pids = torch.arange(4)
    good = losses.sdm_loss(feats, feats, pids, 50.0)
    bad = losses.sdm_loss(feats, feats.roll(1, 0), pids, 50.0)
    assert abs(good.item()) < 1e-6 and bad.item() > 30


def test_id_loss_is_the_mean_of_both_cross_entropies():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    want = 0.5 * (F.cross_entropy(a, y) + F.cross_entropy(b, y))
    assert torch.allclose(losses.id_loss(a, b, y), want)


def _part_reference(v, q, present, scale):
    """§4.4 per sample, as the official loop: the P present parts only, two-way BCE, mean."""
    per = []
    for i in range(v.shape[0]):
        idx = present[i].nonzero().squeeze(1)
        if len(idx) == 0:
            continue
        vi, qi = F.normalize(v[i, idx], dim=-1), F.normalize(q[i, idx], dim=-1)
        logits = scale * vi @ qi.t()
        eye = torch.eye(len(idx))
        per.append(0.5 * (F.binary_cross_entropy_with_logits(logits, eye)
                          + F.binary_cross_entropy_with_logits(logits.t(), eye)))
    return torch.stack(per).mean()


def test_part_loss_batched_equals_the_per_sample_loop():
    g = torch.Generator().manual_seed(2)
    v, q = torch.randn(5, 6, 16, generator=g), torch.randn(5, 6, 16, generator=g)
    present = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1],
                            [0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 1, 1]], dtype=torch.bool)
    got = losses.part_loss(v, q, present, SCALE)
    assert torch.allclose(got, _part_reference(v, q, present, SCALE), atol=1e-6)
    # Features of absent parts do not matter.
    v2 = v.clone()
    v2[~present] = 100.0
    assert torch.allclose(losses.part_loss(v2, q, present, SCALE), got)


def test_part_loss_rewards_matching_queries():
    v = torch.randn(3, 6, 32)
    present = torch.ones(3, 6, dtype=torch.bool)
    matched = losses.part_loss(v, v, present, SCALE)
    assert matched < losses.part_loss(v, v.roll(1, 1), present, SCALE)


def test_mlm_and_mim_losses():
    logits, y = torch.randn(7, 11), torch.randint(0, 11, (7,))
    assert torch.allclose(losses.mlm_loss(logits, y), F.cross_entropy(logits, y))
    pred, target = torch.randn(2, 3, 12), torch.randn(2, 3, 12)
    assert torch.allclose(losses.mim_loss(pred, target), ((pred - target) ** 2).mean())


def test_losses_are_float32_for_bf16_inputs():
    a = torch.randn(4, 8).bfloat16()
    assert losses.sdm_loss(a, a, torch.arange(4), SCALE).dtype == torch.float32
    v = torch.randn(2, 6, 8).bfloat16()
    assert losses.part_loss(v, v, torch.ones(2, 6, dtype=torch.bool), SCALE).dtype == torch.float32


class _Out:
    """A model output stand-in: the loss terms as attributes (None = not computed)."""

    def __init__(self, **terms):
        for name in losses.TERMS + ("mlm_acc",):
            setattr(self, name, terms.get(name))


def _weights(**kw) -> LossWeights:
    """Every field given (the defaults live in params.yaml only)."""
    return LossWeights(**{"sdm": 0.0, "id": 0.0, "mlm": 0.0, "mim": 0.0, "part": 0.0, **kw})


def test_criterion_applies_each_weight_once():
    out = _Out(sdm=torch.tensor(2.0), id=torch.tensor(3.0), mlm=torch.tensor(5.0),
               part=torch.tensor(7.0), mlm_acc=torch.tensor(100.0))
    crit = losses.Criterion(_weights(sdm=1.0, id=0.5, mlm=0.25, part=0.1))
    assert crit(out).item() == pytest.approx(2 + 1.5 + 1.25 + 0.7)
    # a present term whose weight is zero is a diagnostic, not part of the total
    out.mim = torch.tensor(9.0)
    assert crit(out).item() == pytest.approx(2 + 1.5 + 1.25 + 0.7)


def test_criterion_without_weights_is_an_error():
    with pytest.raises(ValueError, match="every loss weight is zero"):
        losses.Criterion(_weights())
    with pytest.raises(ValueError, match="train.weights: every loss weight is zero"):
        losses.Criterion({name: 0.0 for name in losses.TERMS})


def test_criterion_active_terms_and_ddp_hint():
    crit = losses.Criterion(_weights(sdm=1.0, mim=0.5))
    assert crit.terms == frozenset({"sdm", "mim"}) and not crit.all_active
    assert crit.names == losses.TERMS == ("sdm", "id", "mlm", "mim", "part")
    assert crit.weights == {"sdm": 1.0, "id": 0.0, "mlm": 0.0, "mim": 0.5, "part": 0.0}
    full = losses.Criterion({"sdm": 1.0, "id": 0.5, "mlm": 0.5, "mim": 0.5, "part": 0.2})
    assert full.all_active and full.terms == frozenset(losses.TERMS)
    assert repr(full) == "Criterion(sdm=1, id=0.5, mlm=0.5, mim=0.5, part=0.2)"


def test_criterion_rejects_bad_weights_and_missing_terms():
    with pytest.raises(ValueError, match=r"train.weights.mim=-1.0: must be a finite number >= 0"):
        losses.Criterion({"sdm": 1.0, "id": 0.0, "mlm": 0.0, "mim": -1.0, "part": 0.0})
    with pytest.raises(ValueError, match=r"train.weights.part=None"):
        losses.Criterion({"sdm": 1.0, "id": 0.0, "mlm": 0.0, "mim": 0.0})
    crit = losses.Criterion(_weights(sdm=1.0, part=0.5))
    with pytest.raises(ValueError, match=r"loss term 'part' has weight train.weights.part=0.5"):
        crit(_Out(sdm=torch.tensor(1.0)))
