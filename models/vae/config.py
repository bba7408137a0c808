"""The VAE's configuration: one frozen dataclass, read from (and written back to) a diffusers ``config.json``.

Stable Diffusion's first stage is the KL-regularised autoencoder of Rombach et al. 2022 (arXiv 2112.10752,
Sec. 3 and Appendix G); diffusers calls it ``AutoencoderKL``. Its ``vae/config.json`` (SD-v1.5, SD-2.1,
SDXL) fixes the topology: the widths per level, the ResNet blocks per level, the latent channels and
the GroupNorm groups. Two numbers matter outside the network:

    scaling_factor   latents go to the U-Net as z * scaling_factor (0.18215 for SD-1/2, 0.13025 for SDXL),
    shift_factor     and, where the config has one, as (z - shift_factor) * scaling_factor.

``AutoencoderKLConfig.from_diffusers_config(d)`` accepts exactly the keys diffusers' ``AutoencoderKL``
takes (plus the ``_``-prefixed bookkeeping keys, which it ignores) and refuses, in one line listing all of
them, any key or value this implementation does not support.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

ENCODER_BLOCK = "DownEncoderBlock2D"
DECODER_BLOCK = "UpDecoderBlock2D"
ACTIVATIONS = ("silu", "swish")  # diffusers' get_activation maps both names to SiLU


@dataclass(frozen=True)
class AutoencoderKLConfig:
    """Hyper-parameters of the KL autoencoder (diffusers ``AutoencoderKL`` field names and defaults).

    in_channels / out_channels:  image channels in and out (3).
    block_out_channels:          width of each level; the encoder runs them left to right, the decoder
                                 right to left. Level i > 0 of the encoder halves H, W (one downsampler
                                 per level but the last), so latents are H / 2**(levels-1).
    layers_per_block:            ResNet blocks per encoder level (the decoder has one more per level).
    latent_channels:             channels of z (4 for SD; the encoder outputs 2x for mean and log-variance).
    norm_num_groups:             GroupNorm groups everywhere (eps is fixed at 1e-6, as diffusers builds it).
    sample_size:                 the training resolution (informational; any multiple of 2**(levels-1) works).
    scaling_factor, shift_factor: see the module docstring; shift_factor None means 0.
    latents_mean, latents_std:   per-channel latent statistics some configs carry (kept, not used here).
    force_upcast:                diffusers runs this VAE in float32 even in a float16 pipeline (kept).
    use_quant_conv / use_post_quant_conv: the 1x1 convs before the Gaussian / before the decoder.
    mid_block_add_attention:     whether the middle blocks have their single-head self-attention.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        for name in ("latents_mean", "latents_std"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        problems = []
        for name in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if not self.block_out_channels:
            problems.append("block_out_channels must name at least one level")
        bad = [c for c in self.block_out_channels if c < 1 or c % self.norm_num_groups]
        if bad:
            problems.append(f"block_out_channels {list(bad)} must be positive multiples of norm_num_groups="
                            f"{self.norm_num_groups}")
        if problems:
            raise ValueError("invalid AutoencoderKLConfig: " + "; ".join(problems))

    @property
    def downscale(self) -> int:
        """Pixels per latent along H and W (8 for SD's four levels)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON- and ``weights_only``-safe dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AutoencoderKLConfig":
        """Inverse of ``to_dict``; unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown AutoencoderKLConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_diffusers_config(cls, d: Mapping[str, Any], *, source: str = "config.json") -> "AutoencoderKLConfig":
        """Build from a diffusers ``AutoencoderKL`` ``config.json`` dict.

        Keys starting with ``_`` (``_class_name``, ``_diffusers_version``, ...) are bookkeeping and ignored.
        Every unknown key and every unsupported value (block types, activation, ``_class_name``) is named
        in ONE ValueError, before anything is built.
        """
        problems = []
        cls_name = d.get("_class_name", "AutoencoderKL")
        if cls_name != "AutoencoderKL":
            problems.append(f"_class_name={cls_name!r} (only 'AutoencoderKL' is supported)")
        known = {f.name for f in dataclasses.fields(cls)}
        structural = {"down_block_types", "up_block_types", "act_fn"}
        unknown = sorted(k for k in d if not k.startswith("_") and k not in known and k not in structural)
        if unknown:
            problems.append(f"unsupported keys {unknown}")
        levels = len(d.get("block_out_channels", cls.block_out_channels))
        for key, block in (("down_block_types", ENCODER_BLOCK), ("up_block_types", DECODER_BLOCK)):
            types = list(d.get(key, [block] * levels))
            bad = sorted({t for t in types if t != block})
            if bad:
                problems.append(f"{key} {bad} (supported: {block!r})")
            elif len(types) != levels:
                problems.append(f"{key} has {len(types)} entries for {levels} levels of block_out_channels")
        act = d.get("act_fn", "silu")
        if act not in ACTIVATIONS:
            problems.append(f"act_fn={act!r} (supported: {list(ACTIVATIONS)})")
        if problems:
            raise ValueError(f"{source}: AutoencoderKL config not supported: " + "; ".join(problems))
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_diffusers_config(self) -> dict[str, Any]:
        """The ``config.json`` dict diffusers writes for this VAE (``from_diffusers_config``'s inverse)."""
        d = {"_class_name": "AutoencoderKL", **self.to_dict()}
        levels = len(self.block_out_channels)
        d["down_block_types"] = [ENCODER_BLOCK] * levels
        d["up_block_types"] = [DECODER_BLOCK] * levels
        d["act_fn"] = "silu"
        return d


# The published SD VAEs' topology (the vae/config.json of each pipeline): all three share the layout and
# differ only in the scaling factor; SDXL's VAE is retrained with the same architecture.
SD_VAE = AutoencoderKLConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                             norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
SDXL_VAE = dataclasses.replace(SD_VAE, sample_size=1024, scaling_factor=0.13025)
