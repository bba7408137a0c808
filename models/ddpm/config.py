"""The U-Net's configuration: one frozen dataclass, presets, and the per-layer width table.

A model is fully described by a ``ModelConfig``. The architecture hyper-parameters (ch, ch_mult, ...)
fix the *topology*: which blocks exist, where attention sits, which ResBlocks own a 1x1 shortcut.
The ``widths`` table fixes the *width* of every prunable layer (the output channels of each conv and
linear, the number of heads of each attention block). A dense model has an empty table and gets the
widths of Ho et al. 2020; a pruned model carries the complete table, so that

    UNet(config).load_state_dict(state_dict)

rebuilds any pruned network without pickling a module (models/checkpoint.py).

Next to the width table, ``removed`` lists the *removed units* of a layer-pruned network (LAPTOP-Diff,
arXiv 2404.11098, Sec. 3): block paths such as ``down.1.block.0`` or ``mid.attn_1``. A removed ResBlock keeps
only its shortcut (identity, or its 1x1 ``nin_shortcut`` where the dense block has one); a removed attention
block is the identity. See ``models/ddpm/skipped.py`` and ``pruning/layers/units.py``.

Width names are module paths in the DDIM-codebase naming (``down.1.block.0.conv1``); see
``models/ddpm/unet.py`` for the full list. Attention head counts use the key ``<attn path>.heads``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

CONFIG_FIELDS_VERSION = 1


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the DDPM U-Net (Ho et al. 2020, as the DDIM codebase builds it).

    image_size:        input resolution H = W (pixels).
    in_channels:       image channels of x_t; out_channels: channels of the predicted eps.
    ch:                base width; level i has ch * ch_mult[i] channels.
    ch_mult:           width multiplier per resolution level (len = number of levels).
    num_res_blocks:    ResBlocks per level in the encoder (the decoder has one more).
    attn_resolutions:  resolutions (pixels) at which a self-attention block follows each ResBlock.
    dropout:           dropout probability inside ResBlocks (before the second conv).
    num_heads:         attention heads (1 = the DDPM's single-head attention).
    norm_groups:       GroupNorm groups; norm_eps its epsilon (1e-6 in the DDPM code).
    resamp_with_conv:  strided conv downsampling / conv after nearest upsampling (else avg-pool / none).
    attn_scale:        softmax scale 1/sqrt(d) with d the head width "pruned" (the current width: the DDPM
                       code's int(c)**-0.5, and what Diff-Pruning's pruned models do) or "dense" (the width
                       of the unpruned network, so pruning leaves the attention temperature unchanged).
                       Identical for an unpruned network.
    flip_sin_to_cos:   time-embedding layout: False = [sin, cos] (the DDPM), True = [cos, sin] (diffusers' default).
    freq_shift:        time-embedding frequencies f_i = 10000**(-i / (half - freq_shift)): 1 is the DDPM's,
                       0 diffusers' default (and CompVis' LDMs).
    downsample_padding: 0 = pad (0, 1, 0, 1) then a stride-2 conv (the DDPM's TF 'SAME'); 1 = the conv pads
                       by one on every side (diffusers' default). Same weights, another function.
    head_channels:     0: every attention block has ``num_heads`` heads; d > 0: a block of width w has w // d
                       heads (diffusers' ``attention_head_dim``, where the head count varies by level).
    widths:            sorted (layer name, width) pairs overriding the dense widths (pruned models).
    removed:           sorted block paths whose residual branch is removed (layer-pruned models).
    """

    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_heads: int = 1
    norm_groups: int = 32
    norm_eps: float = 1e-6
    resamp_with_conv: bool = True
    attn_scale: str = "pruned"
    flip_sin_to_cos: bool = False
    freq_shift: int = 1
    downsample_padding: int = 0
    head_channels: int = 0
    widths: tuple[tuple[str, int], ...] = field(default=())
    removed: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        # Normalise list inputs (from JSON or a checkpoint) to tuples so the config stays hashable.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        pairs = self.widths.items() if isinstance(self.widths, Mapping) else self.widths
        object.__setattr__(self, "widths", tuple(sorted((str(k), int(v)) for k, v in pairs)))
        if isinstance(self.removed, str):  # a lone path would otherwise become a tuple of characters
            raise ValueError(f"invalid ModelConfig: removed={self.removed!r} must be a list of block paths")
        object.__setattr__(self, "removed", tuple(sorted({str(p) for p in self.removed})))
        problems = []
        for name in ("image_size", "in_channels", "out_channels", "ch", "num_res_blocks", "num_heads", "norm_groups"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if not self.ch_mult:
            problems.append("ch_mult must name at least one level")
        if self.attn_scale not in ("pruned", "dense"):
            problems.append(f"attn_scale={self.attn_scale!r} must be 'pruned' or 'dense'")
        if self.downsample_padding not in (0, 1):
            problems.append(f"downsample_padding={self.downsample_padding} must be 0 (pad right/bottom) or 1")
        if int(self.freq_shift) >= self.ch // 2:
            problems.append(f"freq_shift={self.freq_shift} must be below half the embedding width ({self.ch // 2})")
        if self.head_channels < 0:
            problems.append(f"head_channels={self.head_channels} must be >= 0 (0: num_heads heads everywhere)")
        elif self.head_channels:
            # The attention levels and the middle block (at the last level's width) hold heads.
            attn_mults = [m for i, m in enumerate(self.ch_mult) if self.image_size // 2 ** i in self.attn_resolutions]
            bad = sorted({self.ch * m for m in attn_mults + [self.ch_mult[-1]] if self.ch * m % self.head_channels})
            if bad:
                problems.append(f"head_channels={self.head_channels} does not divide the level widths {bad}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout={self.dropout} must be in [0, 1)")
        if self.image_size % (2 ** (len(self.ch_mult) - 1)) != 0:
            problems.append(f"image_size={self.image_size} is not divisible by 2**(levels-1)={2 ** (len(self.ch_mult) - 1)}")
        for name, width in self.widths:
            if width < 1:
                problems.append(f"width of {name!r} is {width}; every layer needs at least one channel")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def width_table(self) -> dict[str, int]:
        """The explicit widths as a dict (empty for a dense model)."""
        return dict(self.widths)

    def with_widths(self, widths: Mapping[str, int]) -> "ModelConfig":
        """A copy whose width table is ``widths`` (used by pruning surgery)."""
        return dataclasses.replace(self, widths=tuple(sorted(widths.items())))

    def with_removed(self, removed) -> "ModelConfig":
        """A copy whose set of removed units is ``removed`` (used by layer pruning)."""
        return dataclasses.replace(self, removed=tuple(sorted(set(removed))))

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON- and ``weights_only``-safe dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        d["widths"] = [[k, v] for k, v in self.widths]
        d["removed"] = list(self.removed)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Inverse of ``to_dict``; unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; known keys are {sorted(known)}")
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple((str(k), int(v)) for k, v in (d["widths"].items() if isinstance(d["widths"], Mapping) else d["widths"]))
        return cls(**d)


# Presets. The first three are the published DDPM configurations (DDIM codebase configs/*.yml);
# `tiny` is the embedded default that ships with the repo and trains on 2 CPU cores.
PRESETS: dict[str, ModelConfig] = {
    "cifar10": ModelConfig(image_size=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1),
    "celeba64": ModelConfig(image_size=64, ch=128, ch_mult=(1, 2, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1),
    "church256": ModelConfig(image_size=256, ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0),
    "bedroom256": ModelConfig(image_size=256, ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0),
    # Every structural feature of the real U-Net (3 resolutions, attention at 16x16, concat skips,
    # 1x1 shortcuts, GroupNorm, time embedding) at a size that trains in about an hour on a laptop CPU.
    # 8 GroupNorm groups (not 32) so that each group holds several channels and can lose some.
    "tiny": ModelConfig(image_size=32, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(16,), dropout=0.0, norm_groups=8),
}


def preset(name: str) -> ModelConfig:
    """The named preset; an unknown name is an error listing the known ones."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]
