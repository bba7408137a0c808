"""The vector-quantised autoencoder of the CompVis LDMs (diffusers' ``VQModel``; Rombach et al. 2022, Sec. 3.1
with the VQ regularisation of van den Oord et al. 2017, "Neural Discrete Representation Learning").

    encode:  z_e = quant_conv(Encoder(x))                                         (B, D, H/f, W/f)
    decode:  z_q = e_k with k = argmin_j ||z_e - e_j||_2 per position  (van den Oord et al. 2017, eq. 1)
             x   = Decoder(post_quant_conv(z_q))

The encoder and decoder are the KL autoencoder's (models/vae/autoencoder.py: the same blocks and names), with
the encoder emitting ``latent_channels`` (no mean/log-variance pair). The diffusion model works on z_e
scaled by ``scaling_factor``; ``from_latent`` undoes it and ``decode`` quantises first, as diffusers'
LDMPipeline does (``vqvae.decode(latents / scaling_factor)``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from models.vae.autoencoder import Decoder, Encoder

_FIXED = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}
_ONLY = {"act_fn": "silu", "norm_type": "group", "lookup_from_codebook": False}
_IGNORED = ("force_upcast", "_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


@dataclass(frozen=True)
class VQModelConfig:
    """diffusers ``VQModel`` fields (defaults as there). vq_embed_dim None: the latent channels."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 3
    sample_size: int = 32
    num_vq_embeddings: int = 256
    norm_num_groups: int = 32
    vq_embed_dim: int | None = None
    scaling_factor: float = 0.18215
    mid_block_add_attention: bool = True

    @property
    def embed_dim(self) -> int:
        return self.vq_embed_dim or self.latent_channels

    @classmethod
    def from_diffusers_config(cls, d: Mapping[str, Any], *, source: str = "config.json") -> "VQModelConfig":
        """From a diffusers VQModel config.json dict; every unsupported key or value named in one error."""
        names = {f.name for f in dataclasses.fields(cls)}
        problems = [f"unknown key {k!r}" for k in d if k not in names and k not in _FIXED and k not in _ONLY
                    and k not in _IGNORED]
        problems += [f"{k}={d[k]!r} (only {v!r})" for k, v in _ONLY.items() if k in d and d[k] != v]
        problems += [f"{k} {list(d[k])} (only {v})" for k, v in _FIXED.items()
                     if k in d and any(t != v for t in d[k])]
        if problems:
            raise ValueError(f"{source}: unsupported VQModel config: " + "; ".join(problems))
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        config = cls(**kwargs)
        if "down_block_types" in d and len(d["down_block_types"]) != len(config.block_out_channels):
            raise ValueError(f"{source}: {len(d['down_block_types'])} down blocks for "
                             f"{len(config.block_out_channels)} block_out_channels")
        return config


class VectorQuantizer(nn.Module):
    """The codebook: ``embedding`` (num_vq_embeddings, D); nearest-entry lookup per spatial position."""

    def __init__(self, *, num_embeddings: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D, h, w) -> z_q (B, D, h, w), each position replaced by its nearest codebook vector."""
        B, D, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)  # (B*h*w, D)
        k = torch.cdist(flat, self.embedding.weight).argmin(dim=1)  # eq. 1
        return self.embedding(k).reshape(B, h, w, D).permute(0, 3, 1, 2)


class VQModel(nn.Module):
    """Encoder / codebook / decoder with diffusers' state-dict names (encoder.*, quant_conv, quantize.embedding,
    post_quant_conv, decoder.*)."""

    def __init__(self, config: VQModelConfig):
        super().__init__()
        self.config = config
        c = config
        kw = dict(widths=c.block_out_channels, layers=c.layers_per_block, groups=c.norm_num_groups,
                  mid_attention=c.mid_block_add_attention)
        self.encoder = Encoder(in_ch=c.in_channels, out_ch=c.latent_channels, **kw)
        self.quant_conv = nn.Conv2d(c.latent_channels, c.embed_dim, 1)
        self.quantize = VectorQuantizer(num_embeddings=c.num_vq_embeddings, dim=c.embed_dim)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.latent_channels, 1)
        self.decoder = Decoder(in_ch=c.latent_channels, out_ch=c.out_channels, **kw)

    @classmethod
    def from_diffusers_config(cls, d: Mapping[str, Any], *, source: str = "config.json") -> "VQModel":
        return cls(VQModelConfig.from_diffusers_config(d, source=source))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, in, H, W) in [-1, 1] -> z_e (B, D, H/f, W/f), not quantised."""
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor, *, quantize: bool = True) -> torch.Tensor:
        """z (B, D, h, w) -> image (B, out, h*f, w*f), about [-1, 1]; quantised first unless ``quantize=False``."""
        if quantize:
            z = self.quantize(z)
        return self.decoder(self.post_quant_conv(z))

    def to_latent(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.config.scaling_factor

    def from_latent(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.config.scaling_factor
