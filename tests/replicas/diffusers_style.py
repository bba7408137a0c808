"""A small U-Net in the style of diffusers' ``UNet2DModel`` blocks (huggingface/diffusers ``models/resnet.py``,
``models/attention_processor.py``, ``models/unets/unet_2d_blocks.py``), written independently for the tests.

What matters for pruning is kept as diffusers has it: ``Attention`` stores its head count as ``heads`` (not
``num_heads``), projects (B, N, C) tokens with Linear ``to_q``/``to_k``/``to_v``, splits heads with
``view(B, -1, heads, head_dim)`` where ``head_dim = key.shape[-1] // heads`` (derived from shapes), attends with
``F.scaled_dot_product_attention`` at a fixed ``scale`` attribute, and ``to_out`` is a ModuleList (Linear,
Dropout). ``Downsample2D``/``Upsample2D`` assert ``x.shape[1] == self.channels`` in forward: a width attribute
that pruning must keep current. ``ResnetBlock2D`` decides its shortcut at construction (``conv_shortcut`` is
None or a 1x1 conv).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups or channels, num_channels=channels, eps=1e-6)  # 0: per channel


class ResnetBlock2D(nn.Module):
    def __init__(self, *, in_channels: int, out_channels: int, temb_channels: int, groups: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Attention(nn.Module):
    def __init__(self, query_dim: int, *, heads: int, dim_head: int, groups: int):
        super().__init__()
        self.heads = heads
        self.inner_dim = heads * dim_head
        self.scale = dim_head ** -0.5
        self.group_norm = group_norm(query_dim, groups)
        self.to_q = nn.Linear(query_dim, self.inner_dim)
        self.to_k = nn.Linear(query_dim, self.inner_dim)
        self.to_v = nn.Linear(query_dim, self.inner_dim)
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, query_dim), nn.Dropout(0.0)])

    def forward(self, hidden_states):
        residual = hidden_states
        B, C, H, W = hidden_states.shape
        hidden_states = hidden_states.view(B, C, H * W).transpose(1, 2)  # (B, N, C)
        hidden_states = self.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query, key, value = self.to_q(hidden_states), self.to_k(hidden_states), self.to_v(hidden_states)
        head_dim = key.shape[-1] // self.heads  # from shapes: channel pruning needs no update here
        query = query.view(B, -1, self.heads, head_dim).transpose(1, 2)
        key = key.view(B, -1, self.heads, head_dim).transpose(1, 2)
        value = value.view(B, -1, self.heads, head_dim).transpose(1, 2)
        hidden_states = F.scaled_dot_product_attention(query, key, value, scale=self.scale)
        hidden_states = hidden_states.transpose(1, 2).reshape(B, -1, self.heads * head_dim)
        hidden_states = self.to_out[1](self.to_out[0](hidden_states))
        hidden_states = hidden_states.transpose(-1, -2).reshape(B, C, H, W)
        return hidden_states + residual


class Downsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        assert x.shape[1] == self.channels  # diffusers does exactly this
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        assert x.shape[1] == self.channels
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def timestep_proj(t: torch.Tensor, dim: int) -> torch.Tensor:
    """diffusers' ``Timesteps(dim, flip_sin_to_cos=False, downscale_freq_shift=1)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class TinyUNet2D(nn.Module):
    """Two levels (c, 2c), one ResnetBlock2D per level, multi-head attention at the lower level and in the mid
    block, skip concatenations in the decoder. ``groups=0`` makes every GroupNorm per channel."""

    def __init__(self, *, c: int = 16, heads: int = 2, groups: int = 4):
        super().__init__()
        self.c = c
        t_dim = 4 * c
        self.conv_in = nn.Conv2d(3, c, 3, padding=1)
        self.time_embedding = nn.ModuleDict({"linear_1": nn.Linear(c, t_dim), "linear_2": nn.Linear(t_dim, t_dim)})
        kw = dict(temb_channels=t_dim, groups=groups)
        self.down0 = ResnetBlock2D(in_channels=c, out_channels=c, **kw)
        self.downsample = Downsample2D(c)
        self.down1 = ResnetBlock2D(in_channels=c, out_channels=2 * c, **kw)
        self.down1_attn = Attention(2 * c, heads=heads, dim_head=2 * c // heads, groups=groups)
        self.mid = ResnetBlock2D(in_channels=2 * c, out_channels=2 * c, **kw)
        self.mid_attn = Attention(2 * c, heads=heads, dim_head=2 * c // heads, groups=groups)
        self.up1 = ResnetBlock2D(in_channels=4 * c, out_channels=2 * c, **kw)
        self.up1_attn = Attention(2 * c, heads=heads, dim_head=2 * c // heads, groups=groups)
        self.upsample = Upsample2D(2 * c)
        self.up0 = ResnetBlock2D(in_channels=3 * c, out_channels=c, **kw)
        self.conv_norm_out = group_norm(c, groups)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x, t):
        temb = timestep_proj(t, self.c)
        temb = self.time_embedding["linear_2"](F.silu(self.time_embedding["linear_1"](temb)))
        h0 = self.down0(self.conv_in(x), temb)
        h1 = self.down1_attn(self.down1(self.downsample(h0), temb))
        h = self.mid_attn(self.mid(h1, temb))
        h = self.up1_attn(self.up1(torch.cat([h, h1], dim=1), temb))
        h = self.up0(torch.cat([self.upsample(h), h0], dim=1), temb)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
