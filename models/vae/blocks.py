"""Building blocks of the KL autoencoder (Rombach et al. 2022, arXiv 2112.10752; diffusers' AutoencoderKL).

Module and parameter names are diffusers' own (``resnets.0.norm1``, ``attentions.0.to_q``,
``downsamplers.0.conv``, ...), so a diffusers ``vae/diffusion_pytorch_model.safetensors`` loads with
``load_state_dict`` as it is. Every block takes explicit keyword-only widths; structure (a 1x1 shortcut or
none, a downsampler or none) is decided in ``__init__`` and recorded as module presence.

GroupNorm eps is 1e-6 throughout, as diffusers' Encoder/Decoder build these blocks (``resnet_eps=1e-6``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6


class ResnetBlock(nn.Module):
    """GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3, plus a skip (1x1 ``conv_shortcut`` where widths differ).

    The VAE's ResNet block has no time embedding (diffusers' ResnetBlock2D with ``temb_channels=None``).
    x: (B, in_ch, H, W) -> (B, out_ch, H, W).
    """

    def __init__(self, *, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=EPS)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=EPS)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, out, H, W)
        return h + (x if self.conv_shortcut is None else self.conv_shortcut(x))


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual add.

    GroupNorm, then q, k, v as Linear layers on each position's channel vector (diffusers' ``Attention``
    with ``heads=1``, ``dim_head=ch``: names ``group_norm``, ``to_q``, ``to_k``, ``to_v``, ``to_out.0``),
    softmax(q k^T / sqrt(ch)) v (Vaswani et al. 2017, eq. 1), ``to_out.0``, plus x.
    x: (B, ch, H, W) -> (B, ch, H, W).
    """

    def __init__(self, *, ch: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch, eps=EPS)
        self.to_q = nn.Linear(ch, ch)
        self.to_k = nn.Linear(ch, ch)
        self.to_v = nn.Linear(ch, ch)
        # A list of one so the name is diffusers' ``to_out.0`` (its ``to_out.1`` is a parameter-free Dropout).
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, N, C), N = H*W
        q, k, v = self.to_q(h)[:, None], self.to_k(h)[:, None], self.to_v(h)[:, None]  # (B, 1, N, C)
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]  # (B, N, C); default scale 1/sqrt(C)
        out = self.to_out[0](out).transpose(1, 2).reshape(B, C, H, W)
        return x + out


class Downsample(nn.Module):
    """Halve H, W: pad right and bottom by one, then conv3x3 with stride 2 (diffusers' Downsample2D, padding=0)."""

    def __init__(self, *, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The asymmetric pad is the latent-diffusion codebase's choice (TF "SAME" for an even input).
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H, W by nearest-neighbour interpolation, then conv3x3 (diffusers' Upsample2D, use_conv=True)."""

    def __init__(self, *, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EncoderLevel(nn.Module):
    """``num_layers`` ResNet blocks then an optional downsampler (diffusers' DownEncoderBlock2D)."""

    def __init__(self, *, in_ch: int, out_ch: int, num_layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(in_ch=in_ch if i == 0 else out_ch, out_ch=out_ch, groups=groups)
                                      for i in range(num_layers)])
        self.downsamplers = nn.ModuleList([Downsample(ch=out_ch)]) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class DecoderLevel(nn.Module):
    """``num_layers`` ResNet blocks then an optional upsampler (diffusers' UpDecoderBlock2D)."""

    def __init__(self, *, in_ch: int, out_ch: int, num_layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(in_ch=in_ch if i == 0 else out_ch, out_ch=out_ch, groups=groups)
                                      for i in range(num_layers)])
        self.upsamplers = nn.ModuleList([Upsample(ch=out_ch)]) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """ResNet, then (attention, ResNet): diffusers' UNetMidBlock2D with one layer and no time embedding.

    Without attention (``mid_block_add_attention=False``) it is two ResNet blocks and ``attentions`` is None.
    """

    def __init__(self, *, ch: int, groups: int, attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([SpatialSelfAttention(ch=ch, groups=groups)]) if attention else None
        self.resnets = nn.ModuleList([ResnetBlock(in_ch=ch, out_ch=ch, groups=groups) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)
