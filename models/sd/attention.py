"""The transformer layer of the latent U-Net: ``Attention``, ``GEGLU`` / ``FeedForward`` and ``BasicTransformerBlock``.

A BasicTransformerBlock (Rombach et al. 2022, Sec. 3.3 and Appendix; diffusers' names) is three pre-LayerNorm
residual sub-layers on the (B, N, C) token sequence of one feature map:

    h = h + attn1(norm1(h))                          self-attention over the N = H*W positions
    h = h + attn2(norm2(h), encoder_hidden_states)   cross-attention to the text tokens
    h = h + ff(norm3(h))                             GEGLU feed-forward (Shazeer 2020, eq. 6)

Widths are explicit keyword arguments so that a pruned block is built as easily as a dense one: q/k width,
v width and head count of each attention, and the GEGLU's hidden width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention, out = to_out(softmax(q k^T / sqrt(d)) v) (Vaswani et al. 2017, eq. 1).

    to_q: query_dim -> qk_dim, to_k: context_dim -> qk_dim, to_v: context_dim -> v_dim (no biases, as SD),
    to_out.0: v_dim -> query_dim (with bias); to_out.1 is dropout. Channels are head-major: head h owns
    channels [h d, (h + 1) d). d is the current head width qk_dim / heads (a pruned network that shrinks the
    heads gets the temperature a diffusers Attention built with its widths would have).
    """

    def __init__(self, *, query_dim: int, context_dim: int, qk_dim: int, v_dim: int, heads: int, dropout: float):
        super().__init__()
        if qk_dim % heads or v_dim % heads:
            raise ValueError(f"attention widths q/k={qk_dim}, v={v_dim} are not divisible by heads={heads}")
        self.heads = heads  # the only structure forward reads; pruning surgery keeps it current
        self.to_q = nn.Linear(query_dim, qk_dim, bias=False)
        self.to_k = nn.Linear(context_dim, qk_dim, bias=False)
        self.to_v = nn.Linear(context_dim, v_dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(v_dim, query_dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, query_dim); context: (B, M, context_dim), or None for self-attention. Returns (B, N, query_dim)."""
        context = x if context is None else context
        B, N, _ = x.shape
        M = context.shape[1]
        # (B, L, heads * d) -> (B, heads, L, d): views only; the attention kernel reads the strides.
        q = self.to_q(x).view(B, N, self.heads, -1).transpose(1, 2)  # (B, nh, N, d)
        k = self.to_k(context).view(B, M, self.heads, -1).transpose(1, 2)  # (B, nh, M, d)
        v = self.to_v(context).view(B, M, self.heads, -1).transpose(1, 2)  # (B, nh, M, dv)
        # Fused softmax(q k^T / sqrt(d)) v: the (N, M) weights are never written out.
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, dv)
        out = out.transpose(1, 2).reshape(B, N, -1)  # (B, N, nh * dv)
        return self.to_out[1](self.to_out[0](out))


class GEGLU(nn.Module):
    """GEGLU(x) = (x W + b) * GELU(x V + c) (Shazeer 2020, eq. 6); W and V are the two halves of ``proj``'s
    output, value half first (diffusers' layout), exact (erf) GELU."""

    def __init__(self, *, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, dim) -> (B, N, hidden)."""
        value, gate = self.proj(x).chunk(2, dim=-1)  # (B, N, hidden) each, views
        return F.gelu(gate).mul_(value)  # in place on GELU's fresh output: one allocation fewer


class FeedForward(nn.Module):
    """net = [GEGLU(dim -> hidden), Dropout, Linear(hidden -> dim)] (diffusers' indices: ff.net.0.proj, ff.net.2)."""

    def __init__(self, *, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim=dim, hidden=hidden), nn.Dropout(dropout), nn.Linear(hidden, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention and GEGLU feed-forward, each pre-LayerNorm and residual (module docstring).

    dim: the token width (the Transformer2D's inner width). attn1 / attn2: (qk_dim, v_dim, heads) of the
    self- and cross-attention; ff_hidden: GEGLU hidden width (4 * dim when dense).
    """

    def __init__(self, *, dim: int, context_dim: int, attn1: tuple[int, int, int], attn2: tuple[int, int, int],
                 ff_hidden: int, dropout: float, norm_eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn1 = Attention(query_dim=dim, context_dim=dim, qk_dim=attn1[0], v_dim=attn1[1], heads=attn1[2],
                               dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn2 = Attention(query_dim=dim, context_dim=context_dim, qk_dim=attn2[0], v_dim=attn2[1],
                               heads=attn2[2], dropout=dropout)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.ff = FeedForward(dim=dim, hidden=ff_hidden, dropout=dropout)

    def forward(self, h: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """h: (B, N, dim); encoder_hidden_states: (B, M, context_dim). Returns (B, N, dim)."""
        # Each residual add goes in place into the sub-layer's fresh output (a Linear's, whose backward does not
        # read it): three (B, N, dim) allocations fewer per block than out-of-place adds, never touching h.
        h = self.attn1(self.norm1(h)).add_(h)
        h = self.attn2(self.norm2(h), encoder_hidden_states).add_(h)
        return self.ff(self.norm3(h)).add_(h)

