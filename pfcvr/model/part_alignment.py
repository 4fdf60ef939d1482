"""Part-level local fine-grained alignment (docs/method.md §3.3), batched over the whole batch.

* Visual part features: V[b, k] = sum_n w_n * m[b, k, n] * z[b, n] + bias, i.e. the patch tokens
  z inside part k's patch-grid mask m, weighted by one learned weight per patch position (the
  official ``Conv1d(N -> 1)``), for all [B, 6] at once as one product
  ``(mask * w) @ patch_tokens``.
* Text side: 6 learnable part queries (windows, lights, wheels, mirrors, roof, doors; query k is
  the fixed slot of part k) decoded by a DETR-style post-norm transformer decoder whose memory is
  one context token per part: the part prompt's text feature ("car <part>", encoded once per step
  for the batch, mean over all L positions as in the official code) plus a global feature, the
  caption's EOT feature (``model.part_context: caption``, the paper's "part-specific and
  full-sentence context", our default) or the image's CLS feature (``image``, the official code).
  Parts absent from an image are hidden from its queries with a key padding mask.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pfcvr.model.layers import Attention


class PartDecoderLayer(nn.Module):
    """DETR decoder layer, post-norm: self-attn, cross-attn to the part context, ReLU FFN."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(dim, heads, dropout=dropout)
        self.cross_attn = Attention(dim, heads, dropout=dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2, self.drop3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, tgt: torch.Tensor, qpos: torch.Tensor, memory: torch.Tensor,
                keep: torch.Tensor | None) -> torch.Tensor:
        """tgt, qpos: [B, K, D]; memory: [B, S, D]; keep: bool [B, S] or None -> [B, K, D]."""
        q = tgt + qpos
        tgt = self.norm1(tgt + self.drop1(self.self_attn(q, q, tgt)))
        tgt = self.norm2(tgt + self.drop2(self.cross_attn(tgt + qpos, memory, memory, keep)))
        return self.norm3(tgt + self.drop3(self.ffn(tgt)))


class PartAlignment(nn.Module):
    """Part queries + decoder + visual part pooling.

    dim: joint width D; n_parts: K (6); n_patches: N = G*G; cfg: ``model.part_decoder``.
    """

    def __init__(self, dim: int, n_parts: int, n_patches: int, cfg):
        super().__init__()
        self.query_embed = nn.Parameter(torch.randn(n_parts, dim))
        bound = 1.0 / math.sqrt(n_patches)        # PyTorch's Conv1d(N -> 1) default init
        self.pool_weight = nn.Parameter(torch.empty(n_patches).uniform_(-bound, bound))
        self.pool_bias = nn.Parameter(torch.empty(()).uniform_(-bound, bound))
        self.layers = nn.ModuleList(PartDecoderLayer(dim, cfg.heads, cfg.ffn_dim, cfg.dropout)
                                    for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(dim)
        for p in self.layers.parameters():        # DETR: Xavier-uniform on every matrix
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def visual_parts(self, patch_tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """patch_tokens [B, N, D], masks bool [B, K, N] -> visual part features [B, K, D]."""
        weights = masks.to(patch_tokens.dtype) * self.pool_weight.to(patch_tokens.dtype)
        return torch.matmul(weights, patch_tokens) + self.pool_bias.to(patch_tokens.dtype)

    def decode(self, context: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """context [B, K, D] (one token per part), present bool [B, K] or None -> queries [B, K, D].

        Images without any part attend to all context tokens (their loss is masked out anyway);
        this keeps the attention softmax finite.
        """
        b = context.shape[0]
        keep = None
        if present is not None:
            keep = present | ~present.any(dim=1, keepdim=True)
        qpos = self.query_embed.to(context.dtype).expand(b, -1, -1)
        tgt = torch.zeros_like(qpos)
        for layer in self.layers:
            tgt = layer(tgt, qpos, context, keep)
        return self.norm(tgt)
