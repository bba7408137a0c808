"""Building blocks of the DDPM U-Net (Ho et al. 2020, Appendix B; the DDIM codebase's models/diffusion.py).

Every block takes explicit keyword-only widths. No block looks at a channel count in ``forward``: the
structure (is there a 1x1 shortcut? how many heads?) is decided in ``__init__`` and recorded as module
presence or as a plain attribute that ``pruning/surgery.py`` keeps up to date.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.sd.embeddings import sinusoidal_embedding


def timestep_embedding(t: torch.Tensor, dim: int, *, flip_sin_to_cos: bool = False, freq_shift: int = 1) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in the DDPM/DDIM code by default.

    emb[:, i] = sin(t * f_i) for i < half and cos(t * f_{i-half}) after, with
    f_i = exp(-ln(10000) * i / (half - freq_shift)); freq_shift=1, sin first is the DDPM's layout, diffusers'
    UNet2DModel defaults to freq_shift=0 and cos first (flip_sin_to_cos). The formula is shared with the latent
    family (models/sd/embeddings.py). An odd ``dim`` is zero-padded by one column.

    t: (B,) timesteps. Returns (B, dim).
    """
    return sinusoidal_embedding(t, dim, flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift)


class TimeEmbedding(nn.Module):
    """Two-layer MLP on the sinusoidal embedding: Linear -> SiLU -> Linear (names as DDIM: temb.dense.{0,1})."""

    def __init__(self, *, emb_ch: int, hidden_ch: int, out_ch: int, flip_sin_to_cos: bool = False, freq_shift: int = 1):
        super().__init__()
        self.emb_ch = emb_ch
        self.flip_sin_to_cos, self.freq_shift = flip_sin_to_cos, freq_shift
        self.dense = nn.ModuleList([nn.Linear(emb_ch, hidden_ch), nn.Linear(hidden_ch, out_ch)])

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.emb_ch, flip_sin_to_cos=self.flip_sin_to_cos,
                                 freq_shift=self.freq_shift)  # (B, emb_ch)
        return self.dense[1](F.silu(self.dense[0](emb)))  # (B, out_ch)


class ResBlock(nn.Module):
    """GN -> SiLU -> conv3x3 (+ Linear(SiLU(temb)) over H,W) -> GN -> SiLU -> dropout -> conv3x3, plus skip.

    in_ch -> mid_ch (conv1, temb_proj, norm2) -> out_ch (conv2). ``shortcut`` adds the 1x1 ``nin_shortcut``
    that the dense network needs where in_ch != out_ch; after pruning it stays, whatever the widths.
    """

    def __init__(self, *, in_ch: int, mid_ch: int, out_ch: int, temb_ch: int, dropout: float,
                 norm_groups: int, norm_eps: float, shortcut: bool):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_ch, eps=norm_eps)
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, mid_ch)
        self.norm2 = nn.GroupNorm(norm_groups, mid_ch, eps=norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(mid_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if shortcut else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # The in-place ops only overwrite tensors created just above (GroupNorm and conv outputs, whose
        # backward does not read them), never x: each saves allocating and first touching a fresh
        # activation, which on a CPU costs about as much as the SiLU itself (docs/PERFORMANCE.md).
        h = self.conv1(F.silu(self.norm1(x), inplace=True))  # (B, mid, H, W)
        h += self.temb_proj(F.silu(temb))[:, :, None, None]  # time conditioning, broadcast over H, W
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=True)))  # (B, out, H, W)
        h += x if self.nin_shortcut is None else self.nin_shortcut(x)  # the residual add
        return h


class AttnBlock(nn.Module):
    """Self-attention over the H*W positions, with a residual add.

    q, k: ch -> qk_ch; v: ch -> v_ch; proj_out: v_ch -> ch (1x1 convs, as the DDIM code).
    Each head h attends with softmax(q_h^T k_h * scale), scale = 1/sqrt(d_k) in a dense network
    (Vaswani et al. 2017, eq. 1); the U-Net passes it explicitly because after pruning it may follow the
    pruned head width or keep the dense one (``ModelConfig.attn_scale``). Channels are head-major:
    head h owns channels [h*d, (h+1)*d).
    """

    def __init__(self, *, ch: int, qk_ch: int, v_ch: int, num_heads: int, scale: float, norm_groups: int, norm_eps: float):
        super().__init__()
        if qk_ch % num_heads or v_ch % num_heads:
            raise ValueError(f"attention widths q/k={qk_ch}, v={v_ch} are not divisible by num_heads={num_heads}")
        # num_heads and scale are the only structure forward reads; pruning/surgery.py keeps them current.
        self.num_heads = num_heads
        self.scale = scale
        self.norm = nn.GroupNorm(norm_groups, ch, eps=norm_eps)
        self.q = nn.Conv2d(ch, qk_ch, 1)
        self.k = nn.Conv2d(ch, qk_ch, 1)
        self.v = nn.Conv2d(ch, v_ch, 1)
        self.proj_out = nn.Conv2d(v_ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        h = self.norm(x)
        # Split channels head-major into (num_heads, head_dim) (-1 is the per-head width), then view the
        # positions as rows: (B, nh, N, d). Views only; the attention kernel reads the strides.
        q = self.q(h).reshape(B, self.num_heads, -1, H * W).transpose(-1, -2)  # (B, nh, N, dq)
        k = self.k(h).reshape(B, self.num_heads, -1, H * W).transpose(-1, -2)  # (B, nh, N, dq)
        v = self.v(h).reshape(B, self.num_heads, -1, H * W).transpose(-1, -2)  # (B, nh, N, dv)
        # out_i = sum_j softmax_j(q_i . k_j * scale) v_j (Vaswani et al. eq. 1), fused: the (N, N) weights
        # are never written out. The scale is passed explicitly: SDPA's default 1/sqrt(dq) is the
        # "pruned" temperature, wrong for attn_scale="dense".
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, nh, N, dv)
        # Back to (B, nh * dv, H, W): a view for one head (then in channels-last memory order), a copy for several.
        out = out.transpose(-1, -2).reshape(B, -1, H, W)
        # Residual add out of place and x first, so the result keeps x's memory format whatever the SDPA
        # output's layout was.
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve H, W: pad (0, 1, 0, 1) then conv3x3 stride 2 (TF 'SAME' padding of the DDPM; ``padding=0``), or
    conv3x3 stride 2 padding 1 (diffusers' default, ``padding=1``), or 2x2 avg-pool."""

    def __init__(self, *, in_ch: int, out_ch: int, with_conv: bool, padding: int = 0):
        super().__init__()
        if not with_conv and in_ch != out_ch:
            raise ValueError(f"average-pool downsampling keeps the width, got {in_ch} -> {out_ch}")
        self.padding = padding
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=padding) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        # padding 1 is inside the conv; padding 0 pads only the right and bottom (one asymmetric column/row).
        return self.conv(x) if self.padding else self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H, W by nearest-neighbour interpolation, then (optionally) conv3x3."""

    def __init__(self, *, in_ch: int, out_ch: int, with_conv: bool):
        super().__init__()
        if not with_conv and in_ch != out_ch:
            raise ValueError(f"upsampling without a conv keeps the width, got {in_ch} -> {out_ch}")
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1) if with_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)
