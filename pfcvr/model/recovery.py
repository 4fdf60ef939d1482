"""Bi-directional mask recovery (docs/method.md §3.4, §3.5).

* :class:`TextRecovery` (MLM, IRRA's IRR module): the corrupted caption's tokens [B, L, D] query
  the clean image's tokens through one cross-attention layer (LayerNorm on both sides; its output
  *replaces* the query, no residual), then ``model.mlm_decoder.layers`` CLIP-style blocks, a
  LayerNorm, and the head Linear -> QuickGELU -> LayerNorm -> Linear(vocab). The head runs only at
  the corrupted positions (the loss ignores every other position anyway), or, for a static-shape
  graph (``torch.compile``, CUDA graphs), at every position, the loss then ignoring the others.
* :class:`ImageRecovery` (MIM): the visible tokens of the second vision pass are put back in
  place among learnable mask tokens, a learnable decoder position embedding is added, and
  ``model.mim_decoder.layers`` blocks of [self-attention, cross-attention to the clean caption's
  tokens, GEGLU FFN] (pre-LN, residual; heads x head_dim inner width, bias-free q/k/v) decode
  them; the pixel head predicts the P*P*3 normalised pixels of the *removed* patches only.
"""
from __future__ import annotations

import torch
from torch import nn

from pfcvr.model.layers import GEGLU, Attention, QuickGELU, ResidualBlock


class TextRecovery(nn.Module):
    """MLM branch. dim: D; vocab_size: V; cfg: ``model.mlm_decoder`` (layers, heads)."""

    def __init__(self, dim: int, vocab_size: int, cfg):
        super().__init__()
        self.ln_q = nn.LayerNorm(dim)
        self.ln_kv = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, cfg.heads)
        self.blocks = nn.ModuleList(ResidualBlock(dim, cfg.heads) for _ in range(cfg.layers))
        self.ln_post = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), QuickGELU(), nn.LayerNorm(dim),
                                  nn.Linear(dim, vocab_size))
        self._init(dim, cfg.layers)

    def _init(self, dim: int, layers: int) -> None:
        """IRRA's initialisation (§3.4): attention std w^-0.5, output projections scaled by
        (2 * layers)^-0.5, MLP input std (2w)^-0.5."""
        attn_std, fc_std = dim ** -0.5, (2 * dim) ** -0.5
        proj_std = dim ** -0.5 * (2 * layers) ** -0.5
        for attn in [self.cross_attn, *(b.attn for b in self.blocks)]:
            nn.init.normal_(attn.in_proj_weight, std=attn_std)
            nn.init.normal_(attn.out_proj.weight, std=proj_std)
        for block in self.blocks:
            nn.init.normal_(block.mlp[0].weight, std=fc_std)
            nn.init.normal_(block.mlp[2].weight, std=proj_std)
        nn.init.normal_(self.head[0].weight, std=fc_std)
        nn.init.normal_(self.head[3].weight, std=proj_std)

    def forward(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor,
                selected: torch.Tensor | None) -> torch.Tensor:
        """text_tokens [B, L, D] (corrupted caption), image_tokens [B, T, D] (clean image),
        selected bool [B, L] -> logits [M, V] at the M selected positions (row-major order);
        selected None -> logits [B, L, V] at every position (no data-dependent shape)."""
        kv = self.ln_kv(image_tokens)
        x = self.cross_attn(self.ln_q(text_tokens), kv, kv)
        for block in self.blocks:
            x = block(x)
        x = self.ln_post(x)
        return self.head(x if selected is None else x[selected])


class MIMBlock(nn.Module):
    """Pre-LN block: self-attention, cross-attention to the caption tokens, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, ffn_dim: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, head_dim, qkv_bias=False)
        self.ln_2 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads, head_dim, qkv_bias=False)
        self.ln_3 = nn.LayerNorm(dim)
        self.ffn = GEGLU(dim, ffn_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x [B, T, D], context [B, L, D] -> [B, T, D]."""
        h = self.ln_1(x)
        x = x + self.self_attn(h, h, h)
        x = x + self.cross_attn(self.ln_2(x), context, context)
        return x + self.ffn(self.ln_3(x))


class ImageRecovery(nn.Module):
    """MIM branch. dim: D; n_patches: N; patch_pixels: P*P*3; cfg: ``model.mim_decoder``."""

    def __init__(self, dim: int, n_patches: int, patch_pixels: int, cfg):
        super().__init__()
        self.mask_token = nn.Parameter(torch.randn(dim))
        self.pos_embed = nn.Parameter(torch.randn(1 + n_patches, dim) * dim ** -0.5)
        self.blocks = nn.ModuleList(MIMBlock(dim, cfg.heads, cfg.head_dim, cfg.ffn_dim)
                                    for _ in range(cfg.layers))
        self.pred = nn.Linear(dim, patch_pixels)

    def forward(self, visible: torch.Tensor, keep: torch.Tensor, removed: torch.Tensor,
                context: torch.Tensor) -> torch.Tensor:
        """visible [B, 1+K, D] (CLS + kept patches from the masked pass), keep [B, K] and removed
        [B, R] patch indices, context [B, L, D] clean caption tokens -> pixels [B, R, P*P*3]."""
        b, _, d = visible.shape
        n = keep.shape[1] + removed.shape[1]
        patches = self.mask_token.to(visible.dtype).expand(b, n, d)
        patches = patches.scatter(1, keep.unsqueeze(-1).expand(-1, -1, d), visible[:, 1:])
        x = torch.cat([visible[:, :1], patches], dim=1) + self.pos_embed.to(visible.dtype)
        for block in self.blocks:
            x = block(x, context)
        out = x[:, 1:].gather(1, removed.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return self.pred(out)
