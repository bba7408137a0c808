"""The transformer shared by CLIP's two towers (Radford et al. 2021, arXiv 2103.00020, Sec. 2.4).

A stack of pre-LayerNorm encoder layers (Radford et al. 2019's GPT-2 arrangement that CLIP keeps):

    x = x + out_proj(MHA(layer_norm1(x)))          multi-head self-attention (Vaswani et al. 2017, eq. 1)
    x = x + fc2(act(fc1(layer_norm2(x))))          act = quick_gelu or gelu

Names are transformers' (``layers.N.self_attn.q_proj``, ``layer_norm1``, ``mlp.fc1``, ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU (Hendrycks & Gimpel 2016, Sec. 2) that
    OpenAI's CLIP weights were trained with; the exact GELU would shift their activations."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATION = {"quick_gelu": quick_gelu, "gelu": F.gelu}  # F.gelu: the exact (erf) form


class Attention(nn.Module):
    """Multi-head self-attention with biased q, k, v and output projections; scale 1/sqrt(head_dim).

    x: (B, L, D) -> (B, L, D). ``mask`` is a boolean (B or 1, 1, L, L) "may attend" mask, or None.
    """

    def __init__(self, *, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.k_proj = nn.Linear(dim, dim)  # k before v, q: the order of transformers' state dicts
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        B, L, D = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, nh, L, D/nh), head-major channels
            return t.view(B, L, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, D))  # (B, L, D)


class MLP(nn.Module):
    """fc1 -> activation -> fc2. x: (B, L, D) -> (B, L, D)."""

    def __init__(self, *, dim: int, hidden: int, act: str):
        super().__init__()
        self.act = ACTIVATION[act]
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    """One pre-LN layer: self-attention and MLP, each on a LayerNorm of x and added back to x."""

    def __init__(self, *, dim: int, hidden: int, heads: int, act: str, eps: float, dropout: float):
        super().__init__()
        self.self_attn = Attention(dim=dim, heads=heads, dropout=dropout)
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim=dim, hidden=hidden, act=act)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask=mask, causal=causal)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    """``num_layers`` EncoderLayers. ``forward`` returns every hidden state: [input, after layer 1, ..., last].

    hidden_states[-1] is the encoder's output, hidden_states[-2] the input of its last layer: the
    "penultimate" states SD-2 and SDXL condition on (before any final LayerNorm).
    """

    def __init__(self, *, dim: int, hidden: int, heads: int, num_layers: int, act: str, eps: float, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer(dim=dim, hidden=hidden, heads=heads, act=act, eps=eps,
                                                  dropout=dropout) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor, *, mask: torch.Tensor | None = None, causal: bool = False,
                num_layers: int | None = None) -> list[torch.Tensor]:
        """x: (B, L, D). ``num_layers`` runs only the first layers (for a caller that needs no later state)."""
        states = [x]
        for layer in self.layers[:num_layers]:
            states.append(layer(states[-1], mask=mask, causal=causal))
        return states
