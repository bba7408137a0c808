"""``Transformer2DModel``: a stack of BasicTransformerBlocks applied to a feature map, with a residual add.

    h = proj_in(GroupNorm(x))               1x1 conv (SD-1) or Linear on the tokens (SD-2, SDXL)
    h = blocks(h as (B, H*W, C) tokens)     models/sd/attention.py
    out = x + proj_out(h)                   back to (B, C, H, W)

(Rombach et al. 2022, Appendix; diffusers' ``Transformer2DModel`` with continuous input.) The GroupNorm's
epsilon is 1e-6 whatever the U-Net's norm_eps, as in the reference.
"""
from __future__ import annotations

import torch
from torch import nn


class Transformer2DModel(nn.Module):
    """x: (B, in_channels, H, W) -> (B, in_channels, H, W).

    inner_channels: the token width inside (proj_in's output, every block's ``dim``).
    transformer_blocks: the already-built blocks (BasicTransformerBlock or a removed stand-in).
    use_linear_projection: proj_in/proj_out as Linear applied after/before the token reshape, else 1x1 convs
    applied before/after it (the two orders are the reference's; they differ numerically only by rounding).
    """

    def __init__(self, *, in_channels: int, inner_channels: int, groups: int, use_linear_projection: bool,
                 transformer_blocks: list[nn.Module]):
        super().__init__()
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(groups, in_channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = nn.Linear(in_channels, inner_channels)
            self.proj_out = nn.Linear(inner_channels, in_channels)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_channels, 1)
            self.proj_out = nn.Conv2d(inner_channels, in_channels, 1)
        self.transformer_blocks = nn.ModuleList(transformer_blocks)

    def forward(self, x: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W); encoder_hidden_states: (B, M, context_dim)."""
        B, _, H, W = x.shape
        h = self.norm(x)
        if self.use_linear_projection:
            h = self.proj_in(h.permute(0, 2, 3, 1).reshape(B, H * W, -1))  # (B, N, inner)
        else:
            h = self.proj_in(h)  # (B, inner, H, W)
            h = h.permute(0, 2, 3, 1).reshape(B, H * W, -1)  # (B, N, inner)
        for block in self.transformer_blocks:
            h = block(h, encoder_hidden_states)
        if self.use_linear_projection:
            h = self.proj_out(h).reshape(B, H, W, -1).permute(0, 3, 1, 2)  # (B, C, H, W), channels-last strides
        else:
            h = self.proj_out(h.reshape(B, H, W, -1).permute(0, 3, 1, 2))  # 1x1 conv back to (B, C, H, W)
        # x first: the sum takes x's memory format, whatever the layout of the permuted projection.
        return x + h
