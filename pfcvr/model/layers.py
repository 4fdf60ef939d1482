"""Small transformer pieces shared by the PFCVR heads, all on PyTorch's fused attention."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), CLIP's activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head attention with separate query / key / value inputs (self or cross).

    dim: model width; heads x head_dim: inner width (default dim // heads each). The q, k, v
    projections are one ``[3 * inner, dim]`` matrix (rows q, k, v) so that inputs shared by
    several of them go through one matrix product.

    ``forward(q [B,T,dim], k [B,S,dim], v [B,S,dim], keep=None) -> [B,T,dim]``; keep: optional
    bool [B, S], True for keys that may be attended to. Pass the same tensor object for inputs
    that are the same (self-attention: ``x, x, x``; DETR: ``q, q, x``) to share the product.
    """

    def __init__(self, dim: int, heads: int, head_dim: int | None = None, *, qkv_bias: bool = True,
                 dropout: float = 0.0):
        super().__init__()
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
            head_dim = dim // heads
        self.heads, self.inner, self.dropout = heads, heads * head_dim, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * self.inner, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * self.inner)) if qkv_bias else None
        nn.init.xavier_uniform_(self.in_proj_weight)
        self.out_proj = nn.Linear(self.inner, dim)

    def _project(self, x: torch.Tensor, first: int, count: int) -> list[torch.Tensor]:
        """Rows [first, first+count) x inner of the q/k/v projection applied to x."""
        lo, hi = first * self.inner, (first + count) * self.inner
        bias = None if self.in_proj_bias is None else self.in_proj_bias[lo:hi]
        y = F.linear(x, self.in_proj_weight[lo:hi], bias)
        return list(y.chunk(count, dim=-1)) if count > 1 else [y]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        if q is k and k is v:
            qh, kh, vh = self._project(q, 0, 3)
        elif q is k:
            (qh, kh), (vh,) = self._project(q, 0, 2), self._project(v, 2, 1)
        elif k is v:
            (qh,), (kh, vh) = self._project(q, 0, 1), self._project(k, 1, 2)
        else:
            (qh,), (kh,), (vh,) = (self._project(x, i, 1) for i, x in enumerate((q, k, v)))
        b, t, s, h = q.shape[0], q.shape[1], k.shape[1], self.heads
        qh = qh.reshape(b, t, h, -1).transpose(1, 2)
        kh = kh.reshape(b, s, h, -1).transpose(1, 2)
        vh = vh.reshape(b, s, h, -1).transpose(1, 2)
        mask = None if keep is None else keep[:, None, None, :]
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.inner))


class ResidualBlock(nn.Module):
    """CLIP-style pre-LN transformer block (self-attention + QuickGELU MLP x4), no attention mask.

    [B, T, dim] -> [B, T, dim].
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), QuickGELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h)
        return x + self.mlp(self.ln_2(x))


class GEGLU(nn.Module):
    """Gated GELU feed-forward: Linear dim -> 2*hidden, a * GELU(b), Linear hidden -> dim."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * hidden)
        self.proj_out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(a * F.gelu(b))
