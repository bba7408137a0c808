"""Time conditioning of the latent U-Net: the sinusoidal ``Timesteps`` features and the ``TimestepEmbedding`` MLP.

Names follow diffusers (``time_proj`` has no weights; ``time_embedding.linear_1`` / ``linear_2``), so that a
diffusers state dict loads unchanged. SDXL's added conditioning (``add_time_proj`` + ``add_embedding``) reuses
both classes on the micro-conditioning ids.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, *, flip_sin_to_cos: bool, freq_shift: float,
                         max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal features of (possibly fractional) timesteps (Vaswani et al. 2017, Sec. 3.5).

    f_i = max_period ** (-i / (half - freq_shift)) for i < half = dim // 2, and the features are
    [sin(t f), cos(t f)], or [cos(t f), sin(t f)] with ``flip_sin_to_cos`` (the SD layout; the DDPM code is
    sin-first with freq_shift 1). An odd ``dim`` gets one zero column at the end.

    t: (B,). Returns (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
                      / (half - freq_shift))  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)  # (B, 2 * half)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class Timesteps(nn.Module):
    """Parameter-free sinusoidal features: (B,) timesteps -> (B, num_channels)."""

    def __init__(self, *, num_channels: int, flip_sin_to_cos: bool, freq_shift: float):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(t, self.num_channels, flip_sin_to_cos=self.flip_sin_to_cos,
                                    freq_shift=self.freq_shift)


class TimestepEmbedding(nn.Module):
    """Linear -> SiLU -> Linear: in_channels -> hidden_channels -> out_channels (hidden = out when dense)."""

    def __init__(self, *, in_channels: int, hidden_channels: int, out_channels: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, hidden_channels)
        self.linear_2 = nn.Linear(hidden_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels) -> (B, out_channels)."""
        return self.linear_2(F.silu(self.linear_1(x)))
