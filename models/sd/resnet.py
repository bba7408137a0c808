"""Convolutional parts of the latent U-Net: ``ResnetBlock2D`` and the ``Downsample2D`` / ``Upsample2D`` resamplers.

The ResNet block is the DDPM one (Ho et al. 2020, Appendix B) with diffusers' names (``norm1``, ``conv1``,
``time_emb_proj``, ``norm2``, ``conv2``, ``conv_shortcut``). Every block takes explicit keyword-only widths;
whether a 1x1 shortcut exists is decided by the caller from the dense topology and recorded as module
presence, so ``forward`` never compares channel counts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResnetBlock2D(nn.Module):
    """out = (shortcut(x) + conv2(drop(SiLU(GN(conv1(SiLU(GN(x))) + W SiLU(temb)))))) / output_scale_factor.

    in_channels -> mid_channels (conv1, time_emb_proj, norm2) -> out_channels (conv2). ``shortcut`` adds the
    1x1 ``conv_shortcut`` the dense network has where its in and out widths differ (kept after pruning).
    """

    def __init__(self, *, in_channels: int, mid_channels: int, out_channels: int, temb_channels: int,
                 groups: int, eps: float, dropout: float, output_scale_factor: float, shortcut: bool):
        super().__init__()
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, mid_channels)
        self.norm2 = nn.GroupNorm(groups, mid_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(mid_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if shortcut else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x: (B, in, H, W); temb: (B, temb_channels). Returns (B, out, H, W)."""
        # In-place SiLU/adds only touch tensors made just above (GroupNorm/conv outputs), never x or temb.
        h = self.conv1(F.silu(self.norm1(x), inplace=True))  # (B, mid, H, W)
        h += self.time_emb_proj(F.silu(temb))[:, :, None, None]  # time conditioning, broadcast over H, W
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=True)))  # (B, out, H, W)
        h += x if self.conv_shortcut is None else self.conv_shortcut(x)  # the residual add
        if self.output_scale_factor != 1.0:
            h /= self.output_scale_factor
        return h


class Downsample2D(nn.Module):
    """Halve H, W with a 3x3 stride-2 conv (``conv``). padding 0 pads right/bottom by one first (the
    TF 'SAME' convention of the original LDM code); SD's configs use padding 1."""

    def __init__(self, *, in_channels: int, out_channels: int, padding: int):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour upsampling to ``size`` (twice H, W unless the encoder's skip is odd-sized), then a 3x3 conv."""

    def __init__(self, *, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, out, *size) or (B, out, 2H, 2W)."""
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
