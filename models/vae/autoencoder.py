"""The KL autoencoder of latent diffusion (Rombach et al. 2022, arXiv 2112.10752, Sec. 3; diffusers' AutoencoderKL).

    encode(x)  x in [-1, 1], (B, 3, H, W)  ->  q(z | x) = N(mean, diag(exp(logvar))), each (B, 4, H/f, W/f)
    decode(z)  (B, 4, H/f, W/f)            ->  x_hat (B, 3, H, W), f = 2**(levels-1) (8 for SD)

The diffusion model works on ``to_latent(z) = (z - shift_factor) * scaling_factor`` and the pipeline
decodes ``from_latent(latents)``; the factor scales the latents to about unit variance (Rombach et al.,
Sec. 4.3.2 and Appendix G). State-dict names are diffusers' (``encoder.down_blocks.0.resnets.0.norm1``,
``quant_conv``, ``decoder.up_blocks.0.upsamplers.0.conv``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.vae.blocks import EPS, DecoderLevel, EncoderLevel, MidBlock
from models.vae.config import AutoencoderKLConfig


@dataclass(frozen=True)
class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))); logvar is already clamped to [-30, 20] as the reference does.

    mean, logvar: (B, C, h, w).
    """

    mean: torch.Tensor
    logvar: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def mode(self) -> torch.Tensor:
        """The most likely z (the mean); what SD's img2img and training with ``sample_posterior=False`` use."""
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std * e, e ~ N(0, I) drawn from ``generator`` (reparameterisation, Kingma & Welling 2014)."""
        e = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype,
                        device=self.mean.device if generator is None else generator.device)
        return self.mean + self.std * e.to(self.mean.device)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over C, h, w: 0.5 * sum(mean^2 + var - 1 - logvar). Returns (B,)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class Encoder(nn.Module):
    """conv_in -> levels (ResNets, downsample) -> mid block -> GN -> SiLU -> conv_out (2 * latent channels)."""

    def __init__(self, *, in_ch: int, out_ch: int, widths: tuple[int, ...], layers: int, groups: int,
                 mid_attention: bool):
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, widths[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            EncoderLevel(in_ch=widths[max(i - 1, 0)], out_ch=w, num_layers=layers, groups=groups,
                         downsample=i < len(widths) - 1)
            for i, w in enumerate(widths)])
        self.mid_block = MidBlock(ch=widths[-1], groups=groups, attention=mid_attention)
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down_blocks:
            h = level(h)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class Decoder(nn.Module):
    """conv_in -> mid block -> levels in reverse width order (ResNets, upsample) -> GN -> SiLU -> conv_out.

    Each decoder level has one ResNet block more than the encoder's (diffusers: ``layers_per_block + 1``).
    """

    def __init__(self, *, in_ch: int, out_ch: int, widths: tuple[int, ...], layers: int, groups: int,
                 mid_attention: bool):
        super().__init__()
        rev = tuple(reversed(widths))
        self.conv_in = nn.Conv2d(in_ch, rev[0], 3, padding=1)
        # up_blocks registered before mid_block: the state-dict order of diffusers' files.
        self.up_blocks = nn.ModuleList([
            DecoderLevel(in_ch=rev[max(i - 1, 0)], out_ch=w, num_layers=layers + 1, groups=groups,
                         upsample=i < len(rev) - 1)
            for i, w in enumerate(rev)])
        self.mid_block = MidBlock(ch=rev[0], groups=groups, attention=mid_attention)
        self.conv_norm_out = nn.GroupNorm(groups, rev[-1], eps=EPS)
        self.conv_out = nn.Conv2d(rev[-1], out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class AutoencoderKL(nn.Module):
    """The SD VAE. ``encode`` gives the posterior, ``decode`` the image; see the module docstring.

    config: an ``AutoencoderKLConfig`` (``AutoencoderKLConfig.from_diffusers_config(json.load(...))``).
    """

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        self.config = config
        c = config
        kw = dict(widths=c.block_out_channels, layers=c.layers_per_block, groups=c.norm_num_groups,
                  mid_attention=c.mid_block_add_attention)
        self.encoder = Encoder(in_ch=c.in_channels, out_ch=2 * c.latent_channels, **kw)
        self.decoder = Decoder(in_ch=c.latent_channels, out_ch=c.out_channels, **kw)
        self.quant_conv = nn.Conv2d(2 * c.latent_channels, 2 * c.latent_channels, 1) if c.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1) if c.use_post_quant_conv else None

    @classmethod
    def from_diffusers_config(cls, d: dict, *, source: str = "config.json") -> "AutoencoderKL":
        return cls(AutoencoderKLConfig.from_diffusers_config(d, source=source))

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x: (B, in_channels, H, W) in [-1, 1], H and W multiples of 2**(levels-1). Returns q(z | x)."""
        f = self.config.downscale
        if x.dim() != 4 or x.shape[1] != self.config.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"AutoencoderKL.encode: expected (B, {self.config.in_channels}, H, W) with H, W "
                             f"multiples of {f}, got {tuple(x.shape)}")
        moments = self.encoder(x)  # (B, 2C, h, w)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = moments.chunk(2, dim=1)
        # The clamp keeps exp(logvar) finite in float16 and away from 0 (the reference does the same).
        return DiagonalGaussian(mean=mean, logvar=logvar.clamp(-30.0, 20.0))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_channels, h, w), UNscaled (divide the U-Net's latents first: ``from_latent``)."""
        if z.dim() != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"AutoencoderKL.decode: expected (B, {self.config.latent_channels}, h, w), "
                             f"got {tuple(z.shape)}")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)  # (B, out_channels, h * f, w * f)

    def forward(self, x: torch.Tensor, *, sample_posterior: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruction: decode(mode or sample of encode(x))."""
        q = self.encode(x)
        return self.decode(q.sample(generator) if sample_posterior else q.mode())

    # The diffusion model's latent space: what SD pipelines do around the U-Net.
    def to_latent(self, z: torch.Tensor) -> torch.Tensor:
        """latents = (z - shift_factor) * scaling_factor (shift_factor None counts as 0)."""
        shift = self.config.shift_factor or 0.0
        return (z - shift) * self.config.scaling_factor

    def from_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """z = latents / scaling_factor + shift_factor, ready for ``decode``."""
        shift = self.config.shift_factor or 0.0
        return latents / self.config.scaling_factor + shift
