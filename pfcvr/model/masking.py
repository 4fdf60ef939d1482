"""Corruption for the two recovery directions, made on the batch's device inside the forward.

* :func:`corrupt_captions` — BERT-style text corruption (docs/method.md §1.9): each ordinary token is
  selected with probability ``ratio``; a selected token becomes MASK (80 %), a random ordinary
  token (10 %) or stays (10 %). SOT, EOT, MASK and padding are never selected. A caption with no
  selected token gets one, at a random ordinary position, replaced by MASK (the official code
  forces position 1; a random position avoids always teaching the first word).
* :func:`patch_mask` — exactly ``round(ratio * N)`` patches removed per image (§3.5).
  ``part`` mode prefers patches inside the part regions and fills (or drops) at random to the
  exact count; ``random`` mode is uniform. Vectorised: random scores in [0, 1), +1 inside the
  prior, top-k per row.

Note on naming: ``train.mask_ratio`` is the fraction *removed*. The official default removes
0.75 (432 of 576 patches) although its flag reads ``mim_masked_rate = 0.25``.
"""
from __future__ import annotations

import torch


def removed_count(n_patches: int, ratio: float) -> int:
    """Number of patches removed for ``ratio`` (round half to even, as Python's ``round``)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"train.mask_ratio={ratio}: must be in [0, 1)")
    return int(round(ratio * n_patches))


def patch_mask(batch_size: int, n_patches: int, ratio: float, prior: torch.Tensor | None = None,
               *, device=None, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose the patches to remove for masked image recovery.

    prior: optional bool [B, N], True where removal is preferred (union of the part masks);
    None = uniform random. Returns ``(keep, removed, mask)``: keep LongTensor [B, N-R] and removed
    LongTensor [B, R], each sorted ascending, and mask bool [B, N] (True = removed), with
    R = round(ratio * N) for every image.
    """
    n_rm = removed_count(n_patches, ratio)
    device = prior.device if prior is not None else device
    scores = torch.rand(batch_size, n_patches, device=device, generator=generator)
    if prior is not None:
        if prior.shape != (batch_size, n_patches):
            raise ValueError(f"MIM prior of shape {tuple(prior.shape)}; expected "
                             f"{(batch_size, n_patches)}")
        scores = scores + prior.to(scores.dtype)       # any prior patch outranks any other
    order = scores.argsort(dim=1, descending=True)
    removed = order[:, :n_rm].sort(dim=1).values
    keep = order[:, n_rm:].sort(dim=1).values
    mask = torch.zeros(batch_size, n_patches, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, removed, True)
    return keep, removed, mask


def ordinary_ids(vocab_size: int, special_ids) -> torch.Tensor:
    """All token ids except the special ones: the pool of random replacements [V - S]."""
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[torch.as_tensor(list(special_ids), dtype=torch.long)] = False
    return keep.nonzero().squeeze(1)


def corrupt_captions(ids: torch.Tensor, ratio: float, *, mask_id: int, special_ids: torch.Tensor,
                     ordinary: torch.Tensor, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style corruption of captions ids [B, L].

    special_ids: LongTensor of ids never selected (pad, SOT, EOT, MASK); ordinary: LongTensor of
    the ids random replacements are drawn from (:func:`ordinary_ids`). Returns
    ``(corrupted [B, L], selected bool [B, L])``; the recovery targets are ``ids[selected]``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"train.text_mask_ratio={ratio}: must be in [0, 1)")
    dev = ids.device
    special_ids = special_ids.to(dev)
    eligible = ~torch.isin(ids, special_ids)
    u = torch.rand(ids.shape, device=dev, generator=generator)
    selected = eligible & (u < ratio)
    # Captions with nothing selected: force one random eligible position to MASK.
    pick = torch.where(eligible, torch.rand(ids.shape, device=dev, generator=generator), -1.0)
    forced_pos = pick.argmax(dim=1, keepdim=True)
    need = (~selected.any(dim=1, keepdim=True)) & eligible.any(dim=1, keepdim=True)
    forced = torch.zeros_like(selected).scatter_(1, forced_pos, need)
    selected = selected | forced
    # 80 / 10 / 10 among the selected positions (forced ones always MASK).
    r = torch.rand(ids.shape, device=dev, generator=generator)
    to_mask = selected & ((r < 0.8) | forced)
    to_random = selected & ~to_mask & (r < 0.9)
    ordinary = ordinary.to(dev)
    draw = ordinary[torch.randint(len(ordinary), ids.shape, device=dev, generator=generator)]
    out = torch.where(to_mask, torch.full_like(ids, mask_id), ids)
    out = torch.where(to_random, draw, out)
    return out, selected
